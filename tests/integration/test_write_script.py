"""The proposal write script (redis_io/sink.py, docs/outputs.md) on real servers, both
flavours: what one call writes (audit entry first, then the hash and its TTL), what a
failure at each step leaves behind, and the promise for writes whose outcome is unknown:
no audit entry twice, none lost, whether the connection dies before the server ran the
write (CLIENT PAUSE WRITE + CLIENT KILL) or after it (a relay that swallows the reply).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import msgspec
import pytest
import redis.asyncio as aioredis
from anyio.abc import TaskStatus

from harvest_async.config import Settings, settings_from_env
from harvest_async.core.engine import Engine, EngineConfig
from harvest_async.core.input_hashes import SymbolInputs
from harvest_async.core.keys import Keys
from harvest_async.core.ports import Output, PublishOut
from harvest_async.errors import WriteRefused
from harvest_async.redis_io.sink import WRITE_SCRIPT, WRITE_SHA, WRITES_CONNECTION, RedisSink
from harvest_async.redis_io.wire import endpoint_from_url
from harvest_async.service.app import serve
from harvest_async.service.runner import Runner
from harvest_async.tools.embedded_server import EmbeddedRedis
from harvest_async.tools.server_binaries import ServerBinary

T = TypeVar("T")
KEYS = Keys()
SYM = "BTCUSDT"
TTL = 90.0


def market() -> dict[str, str]:
    fields = {"sigma": "0.005", "ts": "0.5", "p_trend": "0.6", "p_mr": "0.2", "p_chop": "0.2"}
    return {**fields, "ts_timestamp": str(int(time.time()))}


def position(pnl: float, symbol: str = SYM) -> dict[str, str]:
    """LONG 1 @ 100 with a 2 % stop: pnl 0 -> NONE, 5 -> PARTIAL_25, 9 -> PARTIAL_50."""
    return {
        "symbol": symbol,
        "side": "LONG",
        "quantity": "1.0",
        "entry_price": "100.0",
        "current_price": repr(100.0 + pnl),
        "unrealized_pnl": repr(float(pnl)),
        "created_at": str(int(time.time())),
        "ts_epoch": repr(round(time.time(), 3)),
    }


_last_seq = [0]


def _unique(out: Output) -> Output:
    """`out` with a seq above every earlier one's: each helper below computes with an
    engine of its own, whose seq (epoch milliseconds) two calls in one millisecond share,
    and a hash's seq is what tells whether a write landed."""
    _last_seq[0] = seq = max(out.seq, _last_seq[0] + 1)
    if isinstance(out, PublishOut):
        return msgspec.structs.replace(out, seq=seq, fields={**out.fields, "seq": str(seq)})
    return msgspec.structs.replace(out, seq=seq)


def publish(symbol: str = SYM, pnl: float = 5.0, ttl: float = TTL) -> PublishOut:
    engine = Engine(EngineConfig(symbols=(symbol,), proposal_ttl_sec=ttl))
    engine.observe(SymbolInputs(symbol, market(), {"stop_dist_pct": "0.02"}, position(pnl, symbol)))
    out = engine.evaluate(symbol, time.time())
    assert isinstance(out, PublishOut)
    return _unique(out)  # type: ignore[return-value]


def retract(symbol: str = SYM) -> Output:
    """A retraction of `symbol` (its position closed after a publish)."""
    engine = Engine(EngineConfig(symbols=(symbol,)))
    risk = {"stop_dist_pct": "0.02"}
    engine.observe(SymbolInputs(symbol, market(), risk, position(5.0, symbol)))
    published = engine.evaluate(symbol, time.time())
    assert published is not None
    engine.confirm([published])
    engine.observe(SymbolInputs(symbol, market(), risk, None))
    gone = engine.evaluate(symbol, time.time())
    assert gone is not None and not isinstance(gone, PublishOut)
    return _unique(gone)


async def audit(client: aioredis.Redis) -> list[dict[str, str]]:
    return [fields for _id, fields in await client.xrange(KEYS.stream)]


async def wait_for(probe: Callable[[], Awaitable[T]], what: str, limit: float = 5.0) -> T:
    deadline = time.perf_counter() + limit
    while not (value := await probe()):
        if time.perf_counter() > deadline:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        await anyio.sleep(0.005)
    return value


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def sink_for(url: str, **options: Any) -> AsyncIterator[RedisSink]:
    sink = RedisSink(endpoint_from_url(url), KEYS, **options)
    try:
        yield sink
    finally:
        sink.close()


# -- what one call writes --------------------------------------------------------------------


async def test_a_publish_appends_its_entry_and_replaces_the_hash_with_its_ttl(
    redis_url: str,
) -> None:
    async with connected(redis_url) as client, sink_for(redis_url, proposal_ttl=TTL) as sink:
        await client.hset(KEYS.proposal(SYM), mapping={"foreign": "field"})
        out = publish()
        await sink.write([out])

        assert await client.hgetall(KEYS.proposal(SYM)) == out.fields  # type: ignore[misc]
        assert await audit(client) == [out.audit_fields()]
        assert TTL * 1000 - 5000 < await client.pttl(KEYS.proposal(SYM)) <= TTL * 1000
        assert out.fields["valid_until"] == repr(round(float(out.fields["ts_epoch"]) + TTL, 6))

        gone = retract()
        await sink.write([gone])
        assert not await client.exists(KEYS.proposal(SYM))
        assert (await audit(client))[-1] == gone.audit_fields()


async def test_without_stream_and_ttl_only_the_hash_is_written(redis_url: str) -> None:
    async with (
        connected(redis_url) as client,
        sink_for(redis_url, enable_stream=False, proposal_ttl=0.0) as sink,
    ):
        out = publish(ttl=0.0)
        await sink.write([out])
        assert await client.hgetall(KEYS.proposal(SYM)) == out.fields  # type: ignore[misc]
        assert out.fields["valid_until"] == ""
        assert await client.pttl(KEYS.proposal(SYM)) == -1  # no TTL
        assert not await client.exists(KEYS.stream)
        await sink.write([retract()])
        assert not await client.exists(KEYS.proposal(SYM), KEYS.stream)


async def test_the_script_is_loaded_again_when_the_server_forgot_it(redis_url: str) -> None:
    async with connected(redis_url) as client, sink_for(redis_url) as sink:
        await sink.write([publish(pnl=0.0)])
        await client.script_flush()
        out = publish(pnl=9.0)
        await sink.write([out])
        assert await client.hget(KEYS.proposal(SYM), "seq") == str(out.seq)
        assert len(await audit(client)) == 2


async def test_a_call_of_another_interface_version_changes_nothing(redis_url: str) -> None:
    async with connected(redis_url) as client:
        with pytest.raises(Exception, match="harvest write script v1: bad call"):
            await client.eval(
                WRITE_SCRIPT, 2, KEYS.proposal(SYM), KEYS.stream,
                "2", "publish", "1", "0", "100", "harvest_action", "NONE",
            )  # fmt: skip
        assert not await client.exists(KEYS.proposal(SYM), KEYS.stream)


# -- a failure at each step ----------------------------------------------------------------


async def test_a_failure_after_the_audit_entry_is_reported_touched(redis_url: str) -> None:
    """The server rejects the TTL (PEXPIRE out of range), the last step: the audit entry
    is there, so the output is `touched` (to be written again), never reported landed."""
    async with connected(redis_url) as client, sink_for(redis_url, proposal_ttl=1e17) as sink:
        out = publish()
        with pytest.raises(WriteRefused, match=r"^Redis refused.*TOUCHED .*\[PEXPIRE\]") as info:
            await sink.write([out])
        assert (info.value.landed, info.value.touched) == ((), (out,))
        assert [e["seq"] for e in await audit(client)] == [str(out.seq)]


async def test_a_command_the_acl_refuses_inside_the_script_changes_nothing(
    redis_url: str, redis_binary: ServerBinary
) -> None:
    """No HSET for the user: the script asks the ACL before its first write (Redis 7+,
    Valkey), so the audit entry is not appended either, and Redis's NOPERM names it."""
    if redis_binary.flavour == "redis" and int(redis_binary.version.split(".")[0]) < 7:
        pytest.skip(
            "Redis 6.2 has no ACL check for scripts (redis.acl_check_cmd): a command refused "
            "after the audit entry is reported as touched and rewritten (docs/outputs.md)"
        )
    async with connected(redis_url) as admin:
        await admin.execute_command("ACL", "SETUSER", "w", "on", ">pw", "~*", "+@all", "-hset")
        try:
            url = redis_url.replace("unix://", "unix://w:pw@")
            async with sink_for(url) as sink:
                with pytest.raises(WriteRefused, match=r"NOPERM .*'hset'") as info:
                    await sink.write([publish()])
            assert (info.value.landed, info.value.touched) == ((), ())
            assert not await admin.exists(KEYS.proposal(SYM), KEYS.stream)
        finally:
            await admin.execute_command("ACL", "DELUSER", "w")


async def test_a_batch_whose_multi_is_refused_runs_call_by_call_then_stops_at_multi(
    redis_url: str,
) -> None:
    """The ACL loses MULTI while running: the batch sent with it runs call by call (each
    call atomic; the refusal reports them landed), and later batches send MULTI alone
    first and stop there while it is refused: nothing runs outside a transaction."""
    async with connected(redis_url) as admin:
        await admin.execute_command("ACL", "SETUSER", "w", "on", ">pw", "~*", "+@all", "-multi")
        try:
            url = redis_url.replace("unix://", "unix://w:pw@")
            async with sink_for(url) as sink:
                first = [publish("AUSDT"), publish("BUSDT")]
                with pytest.raises(WriteRefused, match=r"NOPERM.*multi") as info:
                    await sink.write(first)
                assert info.value.landed == tuple(first)
                later = [publish("AUSDT", pnl=9.0), publish("BUSDT", pnl=9.0)]
                with pytest.raises(WriteRefused, match=r"NOPERM.*multi") as info:
                    await sink.write(later)
                assert (info.value.landed, info.value.touched) == ((), ())
                seqs = [e["seq"] for e in await audit(admin)]
                assert seqs == [str(o.seq) for o in first]
                await admin.execute_command("ACL", "SETUSER", "w", "+multi")
                await sink.write(later)
                assert len(await audit(admin)) == 4
        finally:
            await admin.execute_command("ACL", "DELUSER", "w")


# -- writes whose outcome is unknown ---------------------------------------------------------


class CuttingRelay:
    """Unix-socket relay to the server. Armed, it cuts the next connection that sends
    `marker`: with `after`, once the server answered it (the write ran, its reply is
    lost); without, before forwarding it (the server never sees it)."""

    def __init__(self, upstream: str, path: Path, marker: bytes) -> None:
        self.upstream = upstream
        self.path = path
        self.marker = marker
        self.armed = False
        self.after = True
        self.cut = anyio.Event()

    def arm(self, *, after: bool) -> None:
        self.after = after
        self.armed = True

    async def serve(self, *, task_status: TaskStatus[None]) -> None:
        async with await anyio.create_unix_listener(self.path) as listener:
            task_status.started()
            await listener.serve(self._relay)

    async def _relay(self, client: anyio.abc.SocketStream) -> None:
        cutting = anyio.Event()  # this connection's next reply is not forwarded
        async with (
            client,
            await anyio.connect_unix(self.upstream) as server,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(self._replies, server, client, cutting, tg.cancel_scope)
            await self._requests(client, server, cutting)
            tg.cancel_scope.cancel()

    async def _requests(
        self, client: anyio.abc.SocketStream, server: anyio.abc.SocketStream, cutting: anyio.Event
    ) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            while True:
                chunk = await client.receive()
                if self.armed and self.marker in chunk:
                    self.armed = False
                    if not self.after:
                        self.cut.set()
                        return  # closes both sides: the server never sees the write
                    cutting.set()
                await server.send(chunk)

    async def _replies(
        self,
        server: anyio.abc.SocketStream,
        client: anyio.abc.SocketStream,
        cutting: anyio.Event,
        scope: anyio.CancelScope,
    ) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            while True:
                data = await server.receive()
                if cutting.is_set():
                    self.cut.set()
                    scope.cancel()  # the write ran; its reply never reaches the client
                    return
                await client.send(data)


@asynccontextmanager
async def relay_to(server: EmbeddedRedis, tmp_path: Path) -> AsyncIterator[CuttingRelay]:
    relay = CuttingRelay(server.unix_socket, tmp_path / "relay.sock", WRITE_SHA.encode())
    async with anyio.create_task_group() as tg:
        await tg.start(relay.serve)
        try:
            yield relay
        finally:
            tg.cancel_scope.cancel()


@pytest.mark.parametrize("batch", [1, 3])
async def test_a_write_whose_reply_is_lost_is_found_landed_not_repeated(
    redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path, batch: int
) -> None:
    symbols = [f"S{i}USDT" for i in range(batch)]
    async with (
        connected(redis_url) as client,
        relay_to(redis_server, tmp_path) as relay,
        sink_for(f"unix://{relay.path}", proposal_ttl=TTL) as sink,
    ):
        await sink.write([publish(s, pnl=0.0) for s in symbols])
        outputs: list[Output] = [publish(s) for s in symbols[1:]] + [retract(symbols[0])]
        relay.arm(after=True)
        await sink.write(outputs)  # returns normally: it looked, and it had landed
        assert relay.cut.is_set()
        entries = await audit(client)
    assert [e["seq"] for e in entries[batch:]] == [str(o.seq) for o in outputs]  # once each


async def test_a_write_cut_before_the_server_saw_it_is_written_once(
    redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path
) -> None:
    async with (
        connected(redis_url) as client,
        relay_to(redis_server, tmp_path) as relay,
        sink_for(f"unix://{relay.path}") as sink,
    ):
        await sink.write([publish(pnl=0.0)])  # the connection is kept from here on
        out = publish(pnl=9.0)
        relay.arm(after=False)
        await sink.write([out])  # not landed, on a kept connection: sent once more
        assert relay.cut.is_set()
        assert await client.hget(KEYS.proposal(SYM), "seq") == str(out.seq)
        assert [e["seq"] for e in await audit(client)][1:] == [str(out.seq)]


async def test_a_paused_write_killed_before_it_ran_is_written_once(redis_url: str) -> None:
    """The server holds writes (CLIENT PAUSE WRITE); the write connection is killed with
    its EXEC waiting: the transaction is dropped with the connection. The sink sees an
    unknown outcome, finds it did not land, and writes it again once the server lets it."""
    async with connected(redis_url) as admin, sink_for(redis_url) as sink:
        await sink.write([publish(pnl=0.0)])
        out = publish(pnl=9.0)
        await admin.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sink.write, [out])
                waiting = await wait_for(lambda: _waiting_write(admin), "the write to wait")
                await admin.client_kill_filter(_id=waiting)
                await wait_for(lambda: _waiting_write(admin, other_than=waiting), "the retry")
                assert await admin.hget(KEYS.proposal(SYM), "seq") != str(out.seq)
                await admin.execute_command("CLIENT", "UNPAUSE")
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")
        assert await admin.hget(KEYS.proposal(SYM), "seq") == str(out.seq)
        assert [e["seq"] for e in await audit(admin)][1:] == [str(out.seq)]


async def _waiting_write(admin: aioredis.Redis, other_than: str | None = None) -> str | None:
    """The id of the sink's connection while its EXEC waits for the pause to end (the
    `b` flag: blocked)."""
    listing: list[dict[str, str]] = await admin.client_list()
    for entry in listing:
        blocked = entry["name"] == WRITES_CONNECTION and "b" in entry["flags"]
        if blocked and entry["id"] != other_than:
            return entry["id"]
    return None


# -- the service around it ---------------------------------------------------------------------


def make_settings(url: str, **env: str) -> Settings:
    base = {
        "REDIS_URL": url,
        "SYMBOLS": SYM,
        "PUBLISH_INTERVAL_SEC": "0",
        "MAX_PUBLISH_AGE_SEC": "30",
        "INSTANCE": "it",
    }
    return settings_from_env({**base, **env})


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Runner]:
    box: dict[str, Runner] = {}
    ready = anyio.Event()

    async def on_ready(runner: Runner) -> None:
        box["runner"] = runner
        ready.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(serve, settings, on_ready=on_ready, handle_signals=False))
        with anyio.fail_after(10):
            await ready.wait()
        try:
            yield box["runner"]
        finally:
            tg.cancel_scope.cancel()


async def _action(client: aioredis.Redis, action: str) -> bool:
    return bool(await client.hget(KEYS.proposal(SYM), "harvest_action") == action)


@pytest.mark.parametrize("after", [True, False])
async def test_service_never_duplicates_nor_loses_an_audit_entry_on_a_cut_write(
    redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path, after: bool
) -> None:
    """One write of the running service loses its connection, after the server ran it or
    before it saw it; the change ends up published exactly once."""
    async with (
        connected(redis_url) as client,
        relay_to(redis_server, tmp_path) as relay,
        running(make_settings(f"unix://{relay.path}")),
    ):
        for key, fields in (
            (KEYS.marketstate(SYM), market()),
            (KEYS.risk(SYM), {"stop_dist_pct": "0.02"}),
            (KEYS.position(SYM), position(0.0)),
        ):
            await client.hset(key, mapping=fields)  # type: ignore[misc]
        await wait_for(lambda: _action(client, "NONE"), "the first publish")
        relay.arm(after=after)
        await client.hset(KEYS.position(SYM), mapping=position(9.0))  # type: ignore[misc]
        await wait_for(lambda: _action(client, "PARTIAL_50"), "the change published")
        assert relay.cut.is_set()
        await anyio.sleep(0.7)  # past the retry delay: nothing else is written
        entries = await audit(client)
    assert [e["harvest_action"] for e in entries] == ["NONE", "PARTIAL_50"]
