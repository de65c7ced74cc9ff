"""The running service on a real server, both flavours: its hot paths (input reads,
proposal writes, keyspace notifications) run on the wire's own connections, not on
redis-py's; and its proposals expire when no publisher refreshes them (INTERFACE §2.5).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import anyio
import pytest
import redis.asyncio as aioredis

from harvest_async.config import Settings, settings_from_env
from harvest_async.core.keys import Keys
from harvest_async.redis_io.inputs_io import READ_SHA
from harvest_async.redis_io.notifications import NOTIFY_CONNECTION
from harvest_async.redis_io.reader import INPUTS_CONNECTION, RedisInputReader
from harvest_async.redis_io.sink import WRITE_SHA, WRITES_CONNECTION
from harvest_async.redis_io.wire import endpoint_from_url
from harvest_async.service.app import serve
from harvest_async.service.runner import Runner
from harvest_async.tools.embedded_server import EmbeddedRedis

T = TypeVar("T")
KEYS = Keys()
SYM = "BTCUSDT"


def make_settings(url: str, **env: str) -> Settings:
    base = {
        "REDIS_URL": url,
        "SYMBOLS": SYM,
        "PUBLISH_INTERVAL_SEC": "0",
        "MAX_PUBLISH_AGE_SEC": "30",
        "INSTANCE": "hot",
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


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def wait_for(probe: Callable[[], Awaitable[T]], what: str, limit: float = 5.0) -> T:
    deadline = time.perf_counter() + limit
    while not (value := await probe()):
        if time.perf_counter() > deadline:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        await anyio.sleep(0.005)
    return value


async def put_inputs(client: aioredis.Redis, pnl: float) -> None:
    now = time.time()
    market = {"sigma": "0.005", "ts": "0.5", "p_trend": "0.6", "p_mr": "0.2", "p_chop": "0.2"}
    position = {
        "symbol": SYM,
        "side": "LONG",
        "quantity": "1.0",
        "entry_price": "100.0",
        "unrealized_pnl": repr(pnl),
        "created_at": str(int(now)),
        "ts_epoch": repr(round(now, 3)),
    }
    await client.hset(KEYS.marketstate(SYM), mapping={**market, "ts_timestamp": str(int(now))})  # type: ignore[misc]
    await client.hset(KEYS.risk(SYM), mapping={"stop_dist_pct": "0.02"})  # type: ignore[misc]
    await client.hset(KEYS.position(SYM), mapping=position)  # type: ignore[misc]


def shows(client: aioredis.Redis, pnl: float) -> Callable[[], Awaitable[dict[str, str]]]:
    async def probe() -> dict[str, str]:
        fields: dict[str, str] = await client.hgetall(KEYS.proposal(SYM))  # type: ignore[misc]
        return fields if fields.get("position_unrealized_pnl") == repr(pnl) else {}

    return probe


# -- the fast path is the one in use --------------------------------------------------------


async def test_reads_writes_and_notifications_run_on_the_wire_connections(
    redis_server_factory: Callable[..., EmbeddedRedis],
) -> None:
    """MONITOR names the client of every command by its address (TCP), CLIENT LIST maps
    the addresses to names: every input read and proposal write of the running service
    comes from its wire connections, none from a redis-py one, and the subscription is
    the wire's too."""
    server = redis_server_factory(port=0)
    url = server.url
    seen: list[dict[str, Any]] = []
    async with (
        connected(url) as admin,
        connected(url) as monitoring,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(_monitor, monitoring, seen)
        async with running(make_settings(url)):
            start = len(seen)  # from here on: the service's own work, no startup check
            for pnl in (0.0, 5.0, 9.0):  # three changes, each read and published
                await put_inputs(admin, pnl)
                await wait_for(shows(admin, pnl), f"the publish of pnl {pnl}")
            names = {e["addr"]: e["name"] for e in await admin.client_list()}
            subscribed = [e for e in await admin.client_list() if int(e["psub"]) > 0]
        tg.cancel_scope.cancel()
    commands = [(names.get(f"{c['client_address']}:{c['client_port']}"), c) for c in seen[start:]]
    # EVALSHA_RO (Redis 7+, Valkey); Redis 6.2 reads with EVALSHA
    reads = [
        name
        for name, c in commands
        if c["command"].startswith((f"EVALSHA_RO {READ_SHA}", f"EVALSHA {READ_SHA}"))
    ]
    writes = [name for name, c in commands if c["command"].startswith(f"EVALSHA {WRITE_SHA}")]
    assert reads and set(reads) == {INPUTS_CONNECTION}, set(reads)
    assert len(writes) >= 3 and set(writes) == {WRITES_CONNECTION}, set(writes)
    assert [e["name"] for e in subscribed] == [NOTIFY_CONNECTION]


async def _monitor(client: aioredis.Redis, seen: list[dict[str, Any]]) -> None:
    async with client.monitor() as monitor:
        async for command in monitor.listen():
            if command.get("client_type") != "lua":  # not the commands scripts run
                seen.append(command)


async def test_input_reads_need_no_redis_py_connection(redis_url: str) -> None:
    """The reader's redis-py client serves discovery only: with one that cannot connect,
    the input reads still work."""
    async with connected(redis_url) as admin:
        await put_inputs(admin, 5.0)
    unreachable = aioredis.Redis.from_url("redis://127.0.0.1:1/0")
    reader = RedisInputReader(unreachable, KEYS, endpoint_from_url(redis_url))
    try:
        (inputs,) = await reader.fetch([SYM])
    finally:
        reader.close()
        await unreachable.aclose()
    assert inputs.position is not None and inputs.position["unrealized_pnl"] == repr(5.0)


# -- proposal expiry (§2.5) -------------------------------------------------------------------


async def test_proposals_expire_unless_a_publisher_refreshes_them(redis_url: str) -> None:
    """Every publish sets the hash's TTL (PROPOSAL_TTL_SEC) and writes valid_until =
    ts_epoch + TTL; the heartbeat re-publishes, which refreshes both; once no publisher
    runs, the hash is gone within the TTL: no advice."""
    settings = make_settings(redis_url, MAX_PUBLISH_AGE_SEC="1", PROPOSAL_TTL_SEC="2.5")
    async with connected(redis_url) as client:
        async with running(settings):
            await put_inputs(client, 5.0)
            first = await wait_for(shows(client, 5.0), "the first publish")
            assert first["valid_until"] == repr(round(float(first["ts_epoch"]) + 2.5, 6))
            assert 0 < await client.pttl(KEYS.proposal(SYM)) <= 2500

            async def heartbeat() -> dict[str, str]:
                fields: dict[str, str] = await client.hgetall(KEYS.proposal(SYM))  # type: ignore[misc]
                return fields if fields.get("trigger") == "heartbeat" else {}

            beat = await wait_for(heartbeat, "the heartbeat", limit=3.0)
            assert float(beat["valid_until"]) == pytest.approx(float(beat["ts_epoch"]) + 2.5)
            assert float(beat["valid_until"]) > float(first["valid_until"])
            # past the first publish's valid_until, the refreshed hash is still there
            await anyio.sleep(max(0.0, float(first["valid_until"]) + 0.2 - time.time()))
            assert await client.exists(KEYS.proposal(SYM))
        stopped = time.time()

        async def gone() -> bool:
            return not await client.exists(KEYS.proposal(SYM))

        await wait_for(gone, "the proposal to expire", limit=4.0)
    assert time.time() - stopped <= 2.5 + 0.5


async def test_without_a_ttl_proposals_stay_and_valid_until_is_empty(redis_url: str) -> None:
    settings = make_settings(redis_url, PROPOSAL_TTL_SEC="0")
    async with connected(redis_url) as client, running(settings):
        await put_inputs(client, 5.0)
        fields = await wait_for(shows(client, 5.0), "the publish")
        assert fields["valid_until"] == ""
        assert await client.pttl(KEYS.proposal(SYM)) == -1


async def test_input_reads_of_named_hashes_only(redis_url: str) -> None:
    """`fetch` with kinds reads only the hashes asked for (one script call each); the
    others come back None, for the round to keep what the engine holds."""
    async with connected(redis_url) as admin:
        await put_inputs(admin, 5.0)
    client = aioredis.Redis.from_url(redis_url)
    reader = RedisInputReader(client, KEYS, endpoint_from_url(redis_url))
    try:
        position, market = await reader.fetch([SYM, SYM], [4, 1 | 2])
        whole, absent = await reader.fetch([SYM, "NOSUCH"], [7, 4])
    finally:
        reader.close()
        await client.aclose()
    assert position.position is not None and position.position["unrealized_pnl"] == repr(5.0)
    assert position.marketstate is None and position.risk is None
    assert market.position is None and market.marketstate and market.risk
    assert whole.position == position.position and whole.marketstate == market.marketstate
    assert absent.symbol == "NOSUCH" and absent.position is None
