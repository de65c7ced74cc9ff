"""Kernel benchmark: µs per `compute` call, µs per case with decoding, and the
`harvest-async compute --raw` command on 100,000 JSON lines.

Run: `make bench` or `.venv/bin/python bench/kernel.py [--no-append] [--cases N]`.
Results are printed and appended to the "## Kernel (issue 2)" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import gc
import io
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from harvest_async import __version__
from harvest_async.core.kernel import compute
from harvest_async.core.models import MarketState, Position, RiskProposal, Theta
from harvest_async.tools import compute as whatif

ROOT = Path(__file__).resolve().parents[1]
VECTORS_PATH = ROOT / "tests" / "data" / "kernel_vectors_public.json"
BENCHMARKS = ROOT / "BENCHMARKS.md"
SECTION = "## Kernel (issue 2)"
SECTION_INTRO = """\
Command: `make bench` or `.venv/bin/python bench/kernel.py`.

* compute: µs per `kernel.compute` call over the 275 public vectors, inputs decoded
  beforehand (one shared Theta object per distinct tunables, as the service and
  `compute` command use them); median and best of the repeats, loop overhead included.
* decode + compute: the same, starting from each case's compact JSON text
  (msgspec decode of position, market state and P1 proposal; theta cached by its text).
* run_compute: the `compute` command's core in process (decode + compute + encode).
* CLI: `harvest-async compute --raw` on 100,000 JSON lines (the vectors cycled) in a
  subprocess, wall time including interpreter start-up.

Reference: the original kernel took ~32 µs/call; target ≤ 3 µs/call.
"""


class Case(msgspec.Struct, gc=False):
    position: Position
    market_state: MarketState
    p1_proposal: RiskProposal | None = None
    theta: msgspec.Raw = msgspec.Raw()


def machine_info() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"msgspec {msgspec.__version__}, harvest-async {__version__}; "
        f"{platform.system()} {platform.release()} {platform.machine()}, {cpu}, "
        f"{os.cpu_count()} CPUs"
    )


def repeat_timing(body: Callable[[], int], repeats: int) -> tuple[float, float]:
    """Run `body` (which returns how many operations it did) `repeats` times.

    Returns (median, min) of the µs per operation.
    """
    body()  # warm up (caches, branch predictors, allocator)
    results = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        n = body()
        results.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(results), min(results)


def bench_compute(vectors: list[dict[str, Any]], repeats: int, loops: int) -> tuple[float, float]:
    thetas: dict[str, Theta] = {}
    args = []
    for case in vectors:
        key = json.dumps(case["theta"], sort_keys=True)
        theta = thetas.setdefault(key, msgspec.convert(case["theta"], Theta))
        p1 = case["p1_proposal"]
        args.append(
            (
                msgspec.convert(case["position"], Position),
                msgspec.convert(case["market_state"], MarketState),
                None if p1 is None else msgspec.convert(p1, RiskProposal),
                theta,
            )
        )
    batch = args * loops

    def body() -> int:
        for position, market, risk, theta in batch:
            compute(position, market, risk, theta)
        return len(batch)

    return repeat_timing(body, repeats)


def bench_decode_compute(
    vectors: list[dict[str, Any]], repeats: int, loops: int
) -> tuple[float, float]:
    decode = msgspec.json.Decoder(Case).decode
    texts = [msgspec.json.encode({k: v for k, v in c.items() if k != "expected"}) for c in vectors]
    batch = texts * loops
    cache: dict[bytes, Theta] = {}
    default = Theta()

    def body() -> int:
        for text in batch:
            case = decode(text)
            raw = case.theta
            if raw:
                key = bytes(raw)
                theta = cache.get(key)
                if theta is None:
                    theta = cache[key] = msgspec.json.decode(key, type=Theta)
            else:
                theta = default
            compute(case.position, case.market_state, case.p1_proposal, theta)
        return len(batch)

    return repeat_timing(body, repeats)


def bench_run_compute(
    vectors: list[dict[str, Any]], repeats: int, loops: int
) -> tuple[float, float]:
    lines = b"".join(
        msgspec.json.encode({k: v for k, v in c.items() if k != "expected"}) + b"\n"
        for c in vectors
    )
    data = lines * loops
    n = len(vectors) * loops

    def body() -> int:
        status = whatif.run_compute(io.BytesIO(data), io.BytesIO())
        assert status == 0
        return n

    return repeat_timing(body, repeats)


def cli_command() -> list[str]:
    script = Path(sys.executable).with_name("harvest-async")
    if script.exists():
        return [str(script), "compute", "--raw"]
    return [sys.executable, "-m", "harvest_async", "compute", "--raw"]


def bench_cli(vectors: list[dict[str, Any]], n_cases: int, repeats: int) -> tuple[float, float]:
    """Seconds (median, min) for `harvest-async compute` on `n_cases` JSON lines."""
    lines = [
        msgspec.json.encode({k: v for k, v in c.items() if k != "expected"}) + b"\n"
        for c in vectors
    ]
    expected = [
        msgspec.json.encode(
            {"index": i, "name": c["name"], "symbol": c["position"]["symbol"], **c["expected"]}
        )
        for i, c in enumerate(vectors)
    ]
    with tempfile.TemporaryDirectory(prefix="harvest-bench-") as tmp:
        src = Path(tmp) / "cases.jsonl"
        dst = Path(tmp) / "out.jsonl"
        with src.open("wb") as f:
            f.writelines(itertools.islice(itertools.cycle(lines), n_cases))
        times = []
        for _ in range(repeats):
            with dst.open("wb") as out:
                start = time.perf_counter()
                proc = subprocess.run([*cli_command(), str(src)], stdout=out, check=False)
                times.append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise SystemExit(f"harvest-async compute failed with status {proc.returncode}")
        produced = dst.read_bytes().splitlines()
    if len(produced) != n_cases or produced[: len(expected)] != expected[:n_cases]:
        raise SystemExit("harvest-async compute output does not match the vectors")
    return statistics.median(times), min(times)


def append_results(text: str) -> None:
    """Add `text` at the end of the kernel section (created if missing)."""
    content = BENCHMARKS.read_text(encoding="utf-8") if BENCHMARKS.exists() else "# Benchmarks\n"
    if SECTION not in content:
        content = content.rstrip("\n") + f"\n\n{SECTION}\n\n{SECTION_INTRO}"
    start = content.index(SECTION) + len(SECTION)
    nxt = content.find("\n## ", start)
    end = len(content) if nxt == -1 else nxt + 1
    section = content[:end].rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    rest = content[end:]
    BENCHMARKS.write_text(section + ("\n" + rest if rest else ""), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cases", type=int, default=100_000, help="CLI input size")
    parser.add_argument("--repeats", type=int, default=7, help="repeats per measurement")
    parser.add_argument("--cli-repeats", type=int, default=3, help="repeats of the CLI run")
    parser.add_argument("--no-append", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()

    vectors: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_bytes())
    info = machine_info()
    print(info)

    c_med, c_min = bench_compute(vectors, args.repeats, loops=40)
    print(f"compute:          median {c_med:6.2f} µs/call   min {c_min:6.2f} µs/call")
    d_med, d_min = bench_decode_compute(vectors, args.repeats, loops=20)
    print(f"decode + compute: median {d_med:6.2f} µs/case   min {d_min:6.2f} µs/case")
    r_med, r_min = bench_run_compute(vectors, args.repeats, loops=20)
    print(f"run_compute:      median {r_med:6.2f} µs/case   min {r_min:6.2f} µs/case")
    s_med, s_min = bench_cli(vectors, args.cases, args.cli_repeats)
    print(
        f"CLI {args.cases:,} cases: median {s_med:.3f} s ({args.cases / s_med:,.0f} cases/s)"
        f"   min {s_min:.3f} s ({args.cases / s_min:,.0f} cases/s)"
    )

    if not args.no_append:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        append_results(
            f"### {stamp}\n\n"
            f"{info}\n\n"
            "| measurement | median | min |\n"
            "|---|---|---|\n"
            f"| compute (pre-decoded) | {c_med:.2f} µs/call | {c_min:.2f} µs/call |\n"
            f"| decode + compute | {d_med:.2f} µs/case | {d_min:.2f} µs/case |\n"
            f"| run_compute (decode + compute + encode) | {r_med:.2f} µs/case "
            f"| {r_min:.2f} µs/case |\n"
            f"| `harvest-async compute`, {args.cases:,} JSON lines | {s_med:.3f} s = "
            f"{args.cases / s_med:,.0f} cases/s | {s_min:.3f} s = "
            f"{args.cases / s_min:,.0f} cases/s |\n"
        )
        print(f"appended to {BENCHMARKS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
