"""What the end-to-end benchmarks share: the service as its own process, percentiles,
/proc readings and the choice of server binary. Imported by the bench scripts, which
run as `python bench/<name>.py` (this directory is then on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from harvest_async.tools.server_binaries import ServerBinary, find_redis_servers

__all__ = [
    "ServiceProcess",
    "cpu_seconds",
    "ms",
    "pct",
    "pick_binary",
    "status_kib",
]

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def status_kib(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(name)


def pick_binary(flavour: str | None) -> ServerBinary:
    """The server binary of `flavour` (redis|valkey), else the first one found."""
    binaries = find_redis_servers()
    return next((b for b in binaries if b.flavour == flavour), binaries[0])


class ServiceProcess:
    """`python -m harvest_async run` in its own process (uvloop, via the CLI), with the
    benchmarks' settings: every symbol, no publish floor, warnings only; `env`
    overrides or adds settings (GROUP, INSTANCE, ...)."""

    def __init__(self, url: str, log_dir: Path, name: str = "bench", **env: str) -> None:
        self.name = name
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "REDIS_URL": url,
            "SYMBOLS": "*",
            "PUBLISH_INTERVAL_SEC": "0",
            "LOG_LEVEL": "WARNING",
            "INSTANCE": name,
            "STREAM_MAXLEN": "50000",
            **env,
        }
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "harvest_async", "run"],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 10 s; the exit status (None: never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def log_tail(self, lines: int = 10) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
