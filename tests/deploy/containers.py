"""Helpers of the container tiers (tests/deploy): running docker, polling, containers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGE_VARIABLES = ("HARVEST_BASE_IMAGE", "REDIS_IMAGE", "PROMETHEUS_IMAGE", "ALERTMANAGER_IMAGE")
# no local stand-in (Debian does not package Grafana): its step runs when the image is there
OPTIONAL_IMAGE_VARIABLES = ("GRAFANA_IMAGE",)


def official_images() -> dict[str, str]:
    """The compose file's pinned defaults: `${REDIS_IMAGE:-redis:...}` and the like."""
    text = (ROOT / "docker-compose.yml").read_text()
    found = dict(re.findall(r"\$\{(\w+_IMAGE):-([^}]+)\}", text))
    return {name: found[name] for name in (*IMAGE_VARIABLES, *OPTIONAL_IMAGE_VARIABLES)}


def sh(
    *args: str, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, check=False, env=env
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {done.returncode}\n{done.stdout[-4000:]}{done.stderr[-4000:]}"
        )
    return done


def wait_for(
    what: str, condition: Callable[[], object], timeout: float, every: float = 0.5
) -> object:
    """Poll `condition` until it returns something truthy; fail naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def engine_problem() -> str | None:
    """Why no container can run here, or None when a Docker engine answers."""
    if shutil.which("docker") is None:
        return "no docker command (apt-get install docker.io; .ci/run does it as root)"
    done = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"no Docker engine answers (`docker info`: {why}); .ci/run starts dockerd as root"
    return None


def compose_command() -> list[str] | None:
    """The compose v2 plugin when present, else docker-compose (1.29 from Debian works)."""
    if sh("docker", "compose", "version", check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def can_use(image: str) -> bool:
    if sh("docker", "image", "inspect", image, check=False).returncode == 0:
        return True
    return sh("docker", "pull", "--quiet", image, timeout=600, check=False).returncode == 0


@dataclass
class Container:
    """One running container, addressed by id."""

    id: str

    def inspect(self) -> dict[str, object]:
        data: list[dict[str, object]] = json.loads(sh("docker", "inspect", self.id).stdout)
        return data[0]

    def state(self) -> dict[str, object]:
        state = self.inspect()["State"]
        assert isinstance(state, dict)
        return state

    def exec(
        self, *args: str, user: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        who = ["--user", user] if user else []
        return sh("docker", "exec", *who, self.id, *args, check=check, timeout=timeout)

    def started_ms(self) -> int:
        """State.StartedAt (RFC 3339, nanoseconds) in epoch milliseconds."""
        stamp = str(self.state()["StartedAt"])
        whole, _, rest = stamp.partition(".")
        fraction = rest.rstrip("Z")[:6].ljust(6, "0")
        started = datetime.fromisoformat(f"{whole}.{fraction}+00:00")
        return int(started.timestamp() * 1000)

    def logs(self, since: str | None = None) -> str:
        extra = ["--since", since] if since else []
        done = sh("docker", "logs", *extra, self.id)
        return done.stdout + done.stderr
