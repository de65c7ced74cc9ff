"""The container tiers: the compose stack and the systemd unit, each run for real on a
Docker engine.

Both skip, saying why, only when no Docker engine answers (`.ci/run` installs and starts
one when it can). Images: `HARVEST_BASE_IMAGE`, `REDIS_IMAGE` and `PROMETHEUS_IMAGE` from
the environment when set; otherwise the compose file's pinned official images when they are
present or can be pulled; otherwise local stand-ins built from Debian's archive by
`deploy/local-images.sh` (cached between runs by a hash of its recipe).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .containers import IMAGE_VARIABLES, ROOT, can_use, engine_problem, official_images, sh


@pytest.fixture(scope="session")
def docker_engine() -> None:
    problem = engine_problem()
    if problem is not None:
        pytest.skip(problem)


@pytest.fixture(scope="session")
def images(docker_engine: None) -> dict[str, str]:
    """HARVEST_BASE_IMAGE / REDIS_IMAGE / PROMETHEUS_IMAGE to build and run with."""
    chosen = {name: os.environ[name] for name in IMAGE_VARIABLES if os.environ.get(name)}
    if len(chosen) == len(IMAGE_VARIABLES):
        return chosen
    official = official_images()
    if all(can_use(official[name]) for name in IMAGE_VARIABLES if name not in chosen):
        return {**official, **chosen}
    started = time.monotonic()
    done = sh(str(ROOT / "deploy" / "local-images.sh"), timeout=1200, check=False)
    if done.returncode != 0:
        pytest.fail(
            f"official images unavailable and deploy/local-images.sh failed:\n{done.stderr}"
        )
    local = dict(line.split("=", 1) for line in done.stdout.split())
    print(f"local images ready in {time.monotonic() - started:.1f} s: {local}")
    return {**local, **chosen}


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    """./wheelhouse filled from the lock and the current source (never a stale wheel),
    once per test run: pytest-xdist workers share the tree, and one worker rebuilding it
    (its `build/` directory, its wheels removed first) while another builds or reads it
    broke both. The first worker builds under a lock; the others find its stamp."""
    out = ROOT / "wheelhouse"
    out.mkdir(exist_ok=True)
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID", f"pid-{os.getpid()}")
    stamp = out / ".built-for-run"
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text() == run_id:
            return out
        env = {**os.environ, "PYTHON": os.environ.get("PYTHON", "")}
        venv_python = ROOT / ".venv" / "bin" / "python"
        if not env["PYTHON"]:
            env["PYTHON"] = str(venv_python) if venv_python.exists() else "python3"
        done = subprocess.run(
            [str(ROOT / "deploy" / "wheelhouse.sh")],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        stamp.write_text(run_id)
    return out


@pytest.fixture(scope="session")
def unique() -> Iterator[str]:
    """A name part no other test run on this machine uses at the same time."""
    yield f"{os.getpid()}"
