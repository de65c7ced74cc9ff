"""Shutdown with work in flight: a liveness refresh must not outlive the DEL that
announces the stop, and a proposal transaction is finished before the service exits.

The service reaches the server through a relay that can hold back what one connection
sends (a write on the wire that the server has not received yet), so the write is in
flight at the moment the service is told to stop, every time.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import anyio
import anyio.abc
import redis.asyncio as aioredis
from anyio.abc import TaskStatus

from harvest_async.config import settings_from_env
from harvest_async.redis_io.sink import WRITE_SHA
from harvest_async.service.app import serve
from harvest_async.service.runner import Runner
from harvest_async.tools.embedded_server import EmbeddedRedis
from tests.support.live import KEYS, SYM, put_inputs

INSTANCE = "shutdown"


class HoldingRelay:
    """Unix-socket relay to the server. While `holding`, the first connection that sends
    `marker` has that and everything after it held back until `release()`."""

    def __init__(self, upstream: str, path: Path, marker: bytes, watch: bytes) -> None:
        self.upstream = upstream
        self.path = path
        self.marker = marker
        self.watch = watch
        self.holding = False
        self.held = anyio.Event()  # a write is held: in flight, not yet at the server
        self.watched = anyio.Event()  # `watch` went through to the server
        self.unblocked = anyio.Event()
        self.holder: object | None = None

    def release(self) -> None:
        self.holding = False
        self.unblocked.set()

    async def serve(self, *, task_status: TaskStatus[None]) -> None:
        async with await anyio.create_unix_listener(self.path) as listener:
            task_status.started()
            await listener.serve(self.relay_one)

    async def relay_one(self, client: anyio.abc.SocketStream) -> None:
        async with (
            client,
            await anyio.connect_unix(self.upstream) as server,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(self.forward_replies, server, client)
            await self.forward_requests(client, server)
            tg.cancel_scope.cancel()

    async def forward_requests(
        self, client: anyio.abc.SocketStream, server: anyio.abc.SocketStream
    ) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            while True:
                chunk = await client.receive()
                if self.holding and (self.holder is client or self.marker in chunk):
                    self.holder = client
                    self.held.set()
                    await self.unblocked.wait()
                await server.send(chunk)
                if self.watch in chunk:
                    self.watched.set()

    @staticmethod
    async def forward_replies(
        server: anyio.abc.SocketStream, client: anyio.abc.SocketStream
    ) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            while True:
                await client.send(await server.receive())


def resp(*args: str) -> bytes:
    return b"".join(
        [b"*%d\r\n" % len(args), *(b"$%d\r\n%b\r\n" % (len(a), a.encode()) for a in args)]
    )


class Service:
    """`serve` in the test's event loop, reaching the server through `relay`; `stop()`
    cancels it the way SIGTERM does."""

    def __init__(self, relay: HoldingRelay) -> None:
        self.relay = relay
        self.ready = anyio.Event()
        self.stopped = anyio.Event()
        self.scope = anyio.CancelScope()

    def stop(self) -> None:
        self.scope.cancel()

    async def run(self, **env: str) -> None:
        settings = settings_from_env(
            {"REDIS_URL": f"unix://{self.relay.path}", "INSTANCE": INSTANCE, **env}
        )

        async def on_ready(_runner: Runner) -> None:
            self.ready.set()

        with self.scope:
            await serve(settings, on_ready=on_ready, handle_signals=False)
        self.stopped.set()


@asynccontextmanager
async def service_via_relay(
    server: EmbeddedRedis, tmp_path: Path, *, marker: bytes, **env: str
) -> AsyncIterator[Service]:
    """The service started behind a relay that can hold what carries `marker`; the relay
    watches for the DEL of the liveness key."""
    relay = HoldingRelay(
        server.unix_socket,
        tmp_path / "relay.sock",
        marker=marker,
        watch=resp("DEL", KEYS.liveness(INSTANCE)),
    )
    service = Service(relay)
    async with anyio.create_task_group() as tg:
        await tg.start(relay.serve)
        tg.start_soon(partial(service.run, SYMBOLS=SYM, LIVENESS_TTL_SEC="3", **env))
        try:
            with anyio.fail_after(10):
                await service.ready.wait()
            # the startup permission check queues (never runs) a DEL of the key: not the one
            relay.watched = anyio.Event()
            yield service
        finally:
            relay.release()
            with anyio.fail_after(10):
                service.stop()
                await service.stopped.wait()
            tg.cancel_scope.cancel()


# -- tests -------------------------------------------------------------------------------


async def test_a_liveness_refresh_in_flight_at_shutdown_does_not_outlive_it(
    redis_server: EmbeddedRedis, client: aioredis.Redis, tmp_path: Path
) -> None:
    key = KEYS.liveness(INSTANCE)
    refresh = resp("PEXPIRE", key, "3000")  # LIVENESS_TTL_SEC=3: a refresh every second
    async with service_via_relay(redis_server, tmp_path, marker=refresh) as service:
        assert await client.exists(key)  # ready means announced
        service.relay.holding = True
        with anyio.fail_after(5):
            await service.relay.held.wait()  # the next refresh is on its way
        service.stop()
        # the old code deleted the key at once, and the refresh landed afterwards
        with anyio.move_on_after(1.0):
            await service.relay.watched.wait()
        deleted_before_the_refresh_landed = service.relay.watched.is_set()
        service.relay.release()
        with anyio.fail_after(10):
            await service.stopped.wait()
    assert not await client.exists(key)
    assert not deleted_before_the_refresh_landed


async def test_a_write_in_flight_at_shutdown_is_finished_then_the_key_deleted(
    redis_server: EmbeddedRedis, client: aioredis.Redis, tmp_path: Path
) -> None:
    await put_inputs(client, pnl=0.0)
    write = WRITE_SHA.encode()  # a proposal write calls the write script
    async with service_via_relay(
        redis_server, tmp_path, marker=write, PUBLISH_INTERVAL_SEC="0"
    ) as service:
        assert await client.hget(KEYS.proposal(SYM), "harvest_action") == "NONE"
        service.relay.holding = True
        await client.hset(KEYS.position(SYM), "unrealized_pnl", "9.0")
        with anyio.fail_after(5):
            await service.relay.held.wait()
        service.stop()
        with anyio.move_on_after(1.0):
            await service.stopped.wait()
        stopped_with_the_write_in_flight = service.stopped.is_set()
        service.relay.release()
        with anyio.fail_after(10):
            await service.stopped.wait()
    assert not stopped_with_the_write_in_flight
    assert await client.hget(KEYS.proposal(SYM), "harvest_action") == "PARTIAL_50"
    assert not await client.exists(KEYS.liveness(INSTANCE))
