"""The support matrix (README, "Supported"), one runner for users and CI: `nox` runs it all.

Sessions (`nox -l` lists them):

* ``lint``          ruff and mypy --strict, once;
* ``tests(3.1x)``   the unit and component tiers (no server), on every supported Python;
* ``integration``   the integration tier on the oldest supported Python, against every
                    server flavour found (redis-6.2, redis-7.0, valkey-8.1 here);
* ``minimum``       the lowest versions pyproject.toml allows of each direct dependency
                    (`uv --resolution lowest-direct`): both tiers without a server and a
                    quick integration subset.

`make test` is lint plus every tier on one Python; `make test-matrix` (`nox -t matrix`) adds
what it leaves out: the other Pythons and the minimum versions. Environments are built by
uv under .nox/ and reused; interpreters come from PATH (`python3.12`), else from pyenv.
Nothing is downloaded but packages: a missing Python skips its session, or fails it
under CI=true. Arguments after `--` go to pytest (`nox -s integration -- -k redis-6.2`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nox

PYTHONS = ("3.11", "3.12", "3.13")
OLDEST = PYTHONS[0]
EXTRAS = ".[test,plot]"
# the quick integration subset for the minimum versions, against the oldest server found:
# the service end to end (as a process too) and where it meets the client library's edges
# (error replies, refused writes, lost connections)
MINIMUM_INTEGRATION = (
    "tests/integration/test_redis_fixture.py",
    "tests/integration/test_service_live.py",
    "tests/integration/test_service_cli.py",
    "tests/integration/test_service_resilience.py",
    "tests/integration/test_write_outages.py",
)

nox.options.default_venv_backend = "uv"
nox.options.download_python = "never"
nox.options.sessions = ["lint", "tests", "integration", "minimum"]


def _runs(interpreter: str) -> bool:
    try:
        return (
            subprocess.run([interpreter, "-c", ""], capture_output=True, check=False).returncode
            == 0
        )
    except OSError:
        return False


def _expose_pyenv_interpreters() -> None:
    """Put `pythonX.Y` for every supported Python on PATH, taking pyenv's installs where
    PATH has none that runs (pyenv's shims refuse a version that is not selected)."""
    shims = Path(__file__).parent / ".nox" / "interpreters"
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for python in PYTHONS:
        name = f"python{python}"
        found = shutil.which(name)
        if found is not None and _runs(found):
            continue
        installs = sorted(
            versions.glob(f"{python}.*/bin/{name}"),
            key=lambda p: [int(x) for x in p.parents[1].name.split(".") if x.isdigit()],
        )
        if installs:
            shims.mkdir(parents=True, exist_ok=True)
            link = shims / name
            link.unlink(missing_ok=True)
            link.symlink_to(installs[-1])
    if shims.is_dir():
        os.environ["PATH"] = f"{shims}{os.pathsep}{os.environ.get('PATH', '')}"


_expose_pyenv_interpreters()


def _pytest(session: nox.Session, *args: str, env: dict[str, str] | None = None) -> None:
    session.run(
        "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-n",
        "2",
        "--dist",
        "loadfile",
        *args,
        *session.posargs,
        env=env,
    )


@nox.session(python=OLDEST)
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, mypy --strict."""
    session.install("-e", EXTRAS)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "--strict", "harvest_async")


@nox.session
@nox.parametrize(
    "python",
    # the oldest Python runs these tiers in `make test` already
    [nox.param(p, id=p, tags=[] if p == OLDEST else ["matrix"]) for p in PYTHONS],
)
def tests(session: nox.Session) -> None:
    """The unit and component tiers (no server needed). The container tiers (tests/deploy)
    build images with a Python of their own: `make test` runs them once, not per Python."""
    session.install("-e", EXTRAS)
    _pytest(session, "-m", "not integration", "--ignore=tests/deploy")


@nox.session(python=OLDEST)
def integration(session: nox.Session) -> None:
    """The integration tier against every server flavour found."""
    session.install("-e", EXTRAS)
    _pytest(session, "-m", "integration")


_SHOW_VERSIONS = """
import importlib.metadata as md, re
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "absent"
names = [
    re.split(r"[^A-Za-z0-9_.-]", r, maxsplit=1)[0]
    for r in md.requires("harvest-async")
    if 'extra == "matrix"' not in r
]
print("installed:", ", ".join(f"{n}=={version(n)}" for n in dict.fromkeys(names)))
"""

_OLDEST_SERVER = """
from harvest_async.tools.server_binaries import find_redis_servers
def age(server):
    return [int(x) for x in server.version.split(".") if x.isdigit()]
servers = sorted(find_redis_servers(), key=age)
print(servers[0].path if servers else "")
"""


@nox.session(python=OLDEST, tags=["matrix"])
def minimum(session: nox.Session) -> None:
    """The lowest allowed version of every direct dependency (pyproject.toml's bounds)."""
    session.install("--resolution", "lowest-direct", "-e", EXTRAS)
    session.run("python", "-c", _SHOW_VERSIONS, silent=False)
    _pytest(session, "-m", "not integration", "--ignore=tests/deploy")
    oldest = str(session.run("python", "-c", _OLDEST_SERVER, silent=True)).strip()
    _pytest(session, *MINIMUM_INTEGRATION, env={"REDIS_SERVER": oldest} if oldest else None)
