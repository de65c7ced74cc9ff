"""INPUT_STREAMS on a real 3-primary Redis Cluster with a replica each (Redis 7, Valkey).

The cluster runs without keyspace notifications (`notify-keyspace-events ""`) and the
service with a 10-minute poll and heartbeat, so that within a test only stream entries
can tell it that an input changed:

1. streams hashed to every primary: an entry XADDed to each publishes the symbol it
   names (and changes written without an entry stay unpublished: the test can fail);
2. the primary of a stream's slot killed while entries are added (its replica
   promoted): every symbol still ends at its last input;
3. a stream's slot resharded to another primary while entries are added: the same.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from harvest_async.redis_io.client import REDIS_OR_REPLY_ERRORS
from harvest_async.redis_io.cluster.topology import slot_of
from harvest_async.tools.embedded_server import ServerBinary
from tests.support.cluster import ClusterTopology, cluster_flavours, producer
from tests.support.live import KEYS, make_settings, put_inputs, running, wait_for

pytestmark = pytest.mark.slow

SYMBOLS = [f"S{i:03d}USDT" for i in range(60)]


@pytest.fixture(params=cluster_flavours() or [None], ids=lambda b: b.id if b else "none")
def quiet_cluster(request: pytest.FixtureRequest) -> Iterator[ClusterTopology]:
    """3 primaries with a replica each, keyspace notifications off."""
    binary: ServerBinary | None = request.param
    if binary is None:
        pytest.skip("no redis-server >= 7.0 or valkey-server: Redis 6.2 cannot build a cluster")
    with ClusterTopology(binary, replicas=1, notify="") as topology:
        yield topology


def streams_on_every_primary(topology: ClusterTopology) -> list[str]:
    """One input stream per primary (names found by their slots)."""
    chosen: dict[int, str] = {}
    for i in range(200):
        name = f"quantum:stream:input{i}"
        owner = topology.port_of(topology.slot_owner(slot_of(name)))
        chosen.setdefault(owner, name)
        if len(chosen) == 3:
            return sorted(chosen.values())
    raise AssertionError("no stream name found for every primary")


def settings_for(topology: ClusterTopology, streams: list[str]) -> Any:
    return make_settings(
        topology.url,
        SYMBOLS="*",
        INPUT_STREAMS=",".join(streams),
        POLL_INTERVAL_SEC="600",
        MAX_PUBLISH_AGE_SEC="600",
    )


async def shown(client: Any, symbols: list[str]) -> dict[str, str | None]:
    async with client.pipeline(transaction=False) as pipe:
        for symbol in symbols:
            pipe.hget(KEYS.proposal(symbol), "position_unrealized_pnl")
        found = await pipe.execute()
    return dict(zip(symbols, found, strict=True))


async def converged(client: Any, pnl: dict[str, float]) -> bool:
    try:
        now = await shown(client, list(pnl))
    except REDIS_OR_REPLY_ERRORS:
        return False
    return all(now[s] == repr(v) for s, v in pnl.items())


async def seed(client: Any) -> dict[str, float]:
    pnl = {}
    for symbol in SYMBOLS:
        await put_inputs(client, symbol, pnl=1.0)
        pnl[symbol] = 1.0
    return pnl


async def test_entries_on_every_node_publish_their_symbols(quiet_cluster: ClusterTopology) -> None:
    topology = quiet_cluster
    streams = streams_on_every_primary(topology)
    async with producer(topology.url) as client:
        pnl = await seed(client)
        async with running(settings_for(topology, streams)):
            await wait_for(lambda: converged(client, pnl), "the startup pass")
            await anyio.sleep(0.5)  # past the poll mode's first reconcile (at 0.25 s)
            # a change without an entry is not seen (no notifications, no poll)
            await put_inputs(client, SYMBOLS[0], pnl=2.0)
            await anyio.sleep(1.0)
            assert (await shown(client, SYMBOLS[:1]))[SYMBOLS[0]] == repr(1.0)
            for i, symbol in enumerate(SYMBOLS):
                pnl[symbol] = 3.0 + i % 7
                await put_inputs(client, symbol, pnl=pnl[symbol])
                await client.xadd(streams[i % 3], {"symbol": symbol})
            await wait_for(lambda: converged(client, pnl), "every symbol from its entry")


async def write_with_entries(
    client: Any, stream: str, pnl: dict[str, float], stop: anyio.Event
) -> int:
    """Change random symbols and add an entry naming each, retrying through a failover
    (the entry only once the position is written, as a producer would)."""
    rng = random.Random(7)
    writes = 0
    while not stop.is_set():
        symbol = rng.choice(SYMBOLS)
        value = rng.randrange(-4, 25) / 2  # every step is a material change
        while True:
            try:
                await put_inputs(client, symbol, pnl=value)
                await client.xadd(stream, {"symbol": symbol})
                break
            except REDIS_OR_REPLY_ERRORS:
                await anyio.sleep(0.05)
        pnl[symbol] = value
        writes += 1
        await anyio.sleep(0.005)
    return writes


async def _while_writing(
    topology: ClusterTopology, stream: str, act: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Entries added before, during and after `act` (in a thread): every symbol ends at
    its last input; then changes are published from their entries alone (no resync:
    the reader follows its stream to the new node rather than failing on the old)."""
    caplog.set_level("INFO", logger="harvest_async")
    async with producer(topology.url) as client:
        pnl = await seed(client)
        async with running(settings_for(topology, [stream])) as runner:
            await wait_for(lambda: converged(client, pnl), "the startup pass")
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(write_with_entries, client, stream, pnl, stop)
                await anyio.sleep(0.3)
                await anyio.to_thread.run_sync(act)
                # after the move: entries again, read on the new node only
                await anyio.sleep(1.5)
                stop.set()
            await wait_for(lambda: converged(client, pnl), "every symbol's last input", limit=15)
            # settled: further changes are published from their entries alone, no resync
            await anyio.sleep(2.0)
            passes = runner.passes
            for symbol in SYMBOLS[::6]:
                pnl[symbol] += 20.0
                await put_inputs(client, symbol, pnl=pnl[symbol])
                await client.xadd(stream, {"symbol": symbol})
            await wait_for(lambda: converged(client, pnl), "the changes after the move")
            assert runner.passes == passes
    moved = [r for r in caplog.records if "now served by" in r.getMessage()]
    assert moved, "the stream's reader did not follow its slot"


async def test_the_streams_primary_killed_loses_no_change(
    quiet_cluster: ClusterTopology, caplog: pytest.LogCaptureFixture
) -> None:
    topology = quiet_cluster
    stream = streams_on_every_primary(topology)[0]
    victim = topology.slot_owner(slot_of(stream))
    await _while_writing(topology, stream, lambda: topology.failover_by_kill(victim), caplog)


async def test_the_streams_slot_resharded_loses_no_change(
    quiet_cluster: ClusterTopology, caplog: pytest.LogCaptureFixture
) -> None:
    topology = quiet_cluster
    stream = streams_on_every_primary(topology)[0]
    slot = slot_of(stream)
    source = topology.slot_owner(slot)
    target = next(p for p in topology.primaries() if p is not source)
    await _while_writing(topology, stream, lambda: topology.move_slots(slot, slot, target), caplog)
