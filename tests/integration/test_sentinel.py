"""REDIS_URL=redis+sentinel://... against a real Sentinel deployment (INTERFACE §7): one
primary, one replica, three sentinels on loopback (`tests.support.sentinel`), once per
server flavour.

A failover (SENTINEL FAILOVER) is a gap: the service rediscovers the primary, resubscribes
and resyncs, and every symbol shows its latest inputs within 5 s of the new primary
accepting writes, with no audit entry written twice. A sentinel's stale answer (it names
a replica) is never used.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
import redis.asyncio as aioredis

from harvest_async.errors import RedisUnavailable
from harvest_async.redis_io.client import REDIS_OR_REPLY_ERRORS, client_for
from harvest_async.redis_io.wire import Wire, command, endpoint_from_url
from harvest_async.tools.embedded_server import EmbeddedRedis
from tests.support.live import (
    audit,
    connected,
    make_settings,
    messages,
    passes_above,
    proposals,
    put_inputs,
    running,
    wait_for,
)
from tests.support.sentinel import SERVICE, FakeSentinel, SentinelTopology, sentinel_topology

__all__ = ["sentinel_topology"]  # the fixture, used by name below

pytestmark = pytest.mark.slow

SYMBOLS = [f"S{i:02d}USDT" for i in range(12)]
CONVERGENCE_SEC = 5.0


@asynccontextmanager
async def primary_client(url: str) -> AsyncIterator[aioredis.Redis]:
    """A producer's client: follows the primary through the sentinels."""
    client = client_for(url, name="test-producer")
    try:
        yield client
    finally:
        await client.aclose()


async def write_until_done(client: aioredis.Redis, pnl: dict[str, float], stop: anyio.Event) -> int:
    """Change one symbol's position every few ms (retrying through the failover)."""
    writes = 0
    rng = random.Random(7)
    while not stop.is_set():
        symbol = rng.choice(SYMBOLS)
        value = round(rng.uniform(-2.0, 12.0), 2)
        try:
            await put_inputs(client, symbol, pnl=value)
        except REDIS_OR_REPLY_ERRORS:  # READONLY, a killed connection: the switch
            await anyio.sleep(0.02)
            continue
        pnl[symbol] = value
        writes += 1
        await anyio.sleep(0.005)
    return writes


async def all_show(
    client: aioredis.Redis, pnl: dict[str, float], symbols: list[str] = SYMBOLS
) -> list[str]:
    """The symbols whose proposal does not yet show their latest position."""
    found = await proposals(client, symbols)
    return [s for s in symbols if found[s].get("position_unrealized_pnl") != repr(pnl[s])]


async def converge(
    client: aioredis.Redis, pnl: dict[str, float], limit: float, symbols: list[str] = SYMBOLS
) -> float:
    """Seconds until every symbol shows its latest inputs; fails after `limit`."""
    started = time.perf_counter()
    lagging: list[str] = []
    while time.perf_counter() - started < limit:
        try:
            lagging = await all_show(client, pnl, symbols)
        except REDIS_OR_REPLY_ERRORS:
            lagging = ["(primary unreachable)"]
        if not lagging:
            return time.perf_counter() - started
        await anyio.sleep(0.01)
    raise AssertionError(f"not converged within {limit} s: {lagging}")


async def test_failover_is_a_gap_every_symbol_converges_once_logged(
    sentinel_topology: SentinelTopology, caplog: pytest.LogCaptureFixture
) -> None:
    topology = sentinel_topology
    caplog.set_level(logging.INFO)
    settings = make_settings(topology.url, SYMBOLS=",".join(SYMBOLS), CANARY_TIMEOUT_SEC="1")
    pnl: dict[str, float] = {}
    async with primary_client(topology.url) as producer:
        for i, symbol in enumerate(SYMBOLS):
            await put_inputs(producer, symbol, pnl=float(i))
            pnl[symbol] = float(i)
        async with running(settings):
            await converge(producer, pnl, 5.0)
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(write_until_done, producer, pnl, stop)
                await anyio.sleep(0.3)
                old = topology.primary()
                new, accepted = await anyio.to_thread.run_sync(topology.failover)
                await anyio.sleep(0.3)  # inputs keep changing on the new primary
                stop.set()
            # every symbol's latest inputs, a last time, on the new primary itself
            async with connected(new.url) as direct:
                for symbol in SYMBOLS:
                    pnl[symbol] = round(pnl[symbol] + 0.5, 2)
                    await put_inputs(direct, symbol, pnl=pnl[symbol])
                await converge(direct, pnl, CONVERGENCE_SEC - (time.perf_counter() - accepted))
                took = time.perf_counter() - accepted
                # the old primary took writes until demoted; what it took is gone now
                await anyio.to_thread.run_sync(topology.wait_demoted, old)
                await converge(direct, pnl, 2.0)
                entries = await audit(direct)
    assert topology.primary() is new
    assert took < CONVERGENCE_SEC
    seqs = Counter((e["symbol"], e["seq"]) for e in entries)
    assert [key for key, n in seqs.items() if n > 1] == []
    moved = messages(caplog, "Sentinel failover: the primary moved")
    assert len(moved) == 1, moved
    assert f":{new.port}" in moved[0]
    # READONLY during the switch is an outage logged once, not a line per attempt
    assert len(messages(caplog, "READONLY")) <= 1, messages(caplog, "READONLY")


async def test_a_killed_primary_is_replaced_and_every_symbol_converges(
    sentinel_topology: SentinelTopology, caplog: pytest.LogCaptureFixture
) -> None:
    topology = sentinel_topology
    caplog.set_level(logging.INFO)
    settings = make_settings(topology.url, SYMBOLS=",".join(SYMBOLS))
    pnl = {symbol: float(i) for i, symbol in enumerate(SYMBOLS)}
    async with primary_client(topology.url) as producer:
        for symbol, value in pnl.items():
            await put_inputs(producer, symbol, pnl=value)
        async with running(settings):
            await converge(producer, pnl, 5.0)
            new, accepted = await anyio.to_thread.run_sync(topology.kill_primary)
            async with connected(new.url) as direct:
                for symbol in SYMBOLS:
                    pnl[symbol] += 0.5
                    await put_inputs(direct, symbol, pnl=pnl[symbol])
                await converge(direct, pnl, CONVERGENCE_SEC - (time.perf_counter() - accepted))
                entries = await audit(direct)
    seqs = Counter((e["symbol"], e["seq"]) for e in entries)
    assert [key for key, n in seqs.items() if n > 1] == []
    assert len(messages(caplog, "Sentinel failover: the primary moved")) == 1


async def test_a_stale_sentinel_answer_is_not_used(sentinel_topology: SentinelTopology) -> None:
    topology = sentinel_topology
    replica = topology.replica()
    assert replica.port is not None
    async with FakeSentinel(replica.port, masters=False) as stale:
        real = topology.url.split("://", 1)[1]
        url = f"redis+sentinel://127.0.0.1:{stale.port},{real}"
        wire = Wire(endpoint_from_url(url), name="test-stale")
        try:
            ((role, *_rest),) = await wire.roundtrip(command("ROLE"), 1)
        finally:
            wire.close()
        assert role == "master"
        # the stale one was asked first, its answer refused by ROLE
        assert "SENTINEL GET-MASTER-ADDR-BY-NAME" in stale.asked
        settings = make_settings(url, SYMBOLS="STALEUSDT")
        async with primary_client(topology.url) as producer:
            await put_inputs(producer, "STALEUSDT", pnl=5.0)
            async with running(settings):
                found = await proposals(producer, ["STALEUSDT"])
                assert found["STALEUSDT"].get("position_unrealized_pnl") == repr(5.0)


async def test_no_sentinel_knows_the_service(sentinel_topology: SentinelTopology) -> None:
    url = sentinel_topology.url.replace(f"/{SERVICE}/", "/nosuchservice/")
    wire = Wire(endpoint_from_url(url), name="test-unknown")
    with pytest.raises(RedisUnavailable, match="does not know 'nosuchservice'"):
        await wire.roundtrip(command("PING"), 1)


async def test_readonly_without_an_announcement_is_a_gap(
    redis_server_factory: Callable[..., EmbeddedRedis], caplog: pytest.LogCaptureFixture
) -> None:
    """The primary is switched by hand behind a sentinel that announces nothing: the
    first write refused as READONLY makes every connection ask again, and the
    subscription is made anew on the new primary (a gap, so a resync)."""
    caplog.set_level(logging.INFO)
    first, second = redis_server_factory(port=0), redis_server_factory(port=0)
    assert first.port is not None and second.port is not None
    async with FakeSentinel(first.port) as sentinel:
        url = f"redis+sentinel://127.0.0.1:{sentinel.port}/{SERVICE}/0"
        async with connected(first.url) as client:
            await put_inputs(client, "RO", pnl=1.0)
        async with running(make_settings(url, SYMBOLS="RO")) as runner:
            # the second becomes the primary, the first its replica; the sentinel says so
            second.command("REPLICAOF", "127.0.0.1", str(first.port))
            await wait_for_sync(second)
            second.command("REPLICAOF", "NO", "ONE")
            first.command("REPLICAOF", "127.0.0.1", str(second.port))
            sentinel.target = second.port
            passes = runner.passes
            async with connected(second.url) as client:
                await put_inputs(client, "RO", pnl=5.0)
                await converge(client, {"RO": 5.0}, 5.0, ["RO"])
                await wait_for(passes_above(runner, passes), "the resync after the gap")
    assert messages(caplog, "a write was refused as READONLY")
    assert len(messages(caplog, "READONLY")) <= 2  # the outage once, the resubscribe once


async def wait_for_sync(replica: EmbeddedRedis) -> None:
    async def synced() -> bool:
        return "master_link_status:up" in str(replica.command("INFO", "replication"))

    await wait_for(synced, "the replica in sync", limit=10.0)
