"""The cluster's write order (docs/outputs.md "On a Redis Cluster") against a real
3-primary cluster: the audit entry first on the stream's node, the hash after it on its
own node; a refused hash step leaves the entry and no hash (never the hash ahead); an
uncertain write is settled by `landed`, which finishes it without a second entry."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from harvest_async.core.engine import Engine, EngineConfig
from harvest_async.core.input_hashes import SymbolInputs
from harvest_async.core.ports import Output, PublishOut
from harvest_async.errors import Fenced, WriteRefused
from harvest_async.redis_io.cluster.cluster_sink import ClusterSink
from harvest_async.redis_io.cluster.topology import SlotMap, slot_of
from harvest_async.redis_io.leases import FenceToken
from harvest_async.redis_io.wire import endpoint_from_url
from tests.support.cluster import ClusterTopology, bare_cluster, every_line_bare
from tests.support.live import KEYS, market, now, position

__all__ = ["bare_cluster"]  # the fixture, used by name below
# every release line: the write order rests on the scripts and MULTI each line runs
pytestmark = every_line_bare

_seq = itertools.count(int(now() * 1000))


def publish(symbol: str, pnl: float = 5.0) -> PublishOut:
    engine = Engine(EngineConfig(symbols=(symbol,), proposal_ttl_sec=90.0))
    engine.observe(SymbolInputs(symbol, market(), {"stop_dist_pct": "0.02"}, position(pnl, symbol)))
    out = engine.evaluate(symbol, now())
    assert isinstance(out, PublishOut)
    seq = next(_seq)
    return PublishOut(
        out.symbol,
        {**out.fields, "seq": str(seq)},
        out.decision,
        out.plan_id,
        seq,
        out.at,
        out.trigger,
        out.material,
    )


@pytest.fixture
async def parts(bare_cluster: ClusterTopology) -> AsyncIterator[tuple[ClusterSink, Any]]:
    slots = SlotMap(endpoint_from_url(bare_cluster.url))
    sink = ClusterSink(slots, KEYS, proposal_ttl=90.0)
    client = RedisCluster.from_url(bare_cluster.url, decode_responses=True)
    try:
        yield sink, client
    finally:
        sink.close()
        await client.aclose()


def spread(count: int) -> list[str]:
    """Symbols whose proposal hashes are not in the stream's slot range's node... and
    cover the three nodes (slots 0-16383 split in three)."""
    names = [f"W{i:03d}USDT" for i in range(count)]
    thirds = {slot_of(KEYS.proposal(n)) * 3 // 16384 for n in names}
    assert thirds == {0, 1, 2}
    return names


def stream_node_client(server: Any) -> aioredis.Redis:
    return aioredis.Redis(unix_socket_path=server.unix_socket, decode_responses=True)


async def entries(client: Any) -> list[dict[str, str]]:
    return [fields for _id, fields in await client.xrange(KEYS.stream)]


async def test_entries_first_then_hashes_on_every_node(parts: tuple[ClusterSink, Any]) -> None:
    sink, client = parts
    outputs: list[Output] = [publish(s) for s in spread(12)]
    await sink.write(outputs)
    found = await entries(client)
    assert [(e["symbol"], e["seq"]) for e in found] == [(o.symbol, str(o.seq)) for o in outputs]
    for out in outputs:
        fields = await client.hgetall(KEYS.proposal(out.symbol))
        assert fields["seq"] == str(out.seq)
        assert 0 < await client.pttl(KEYS.proposal(out.symbol)) <= 90_000


async def test_refused_hash_step_leaves_the_entry_and_no_hash(
    bare_cluster: ClusterTopology, parts: tuple[ClusterSink, Any]
) -> None:
    sink, _client = parts
    stream_node = bare_cluster.slot_owner(slot_of(KEYS.stream))
    symbol = next(
        s
        for s in spread(12)
        if bare_cluster.slot_owner(slot_of(KEYS.proposal(s))) is not stream_node
    )
    hash_node = bare_cluster.slot_owner(slot_of(KEYS.proposal(symbol)))
    await sink.slots.refresh()
    hash_node.kill()  # no replica: the hash's slot is lost (the stream's node is up)
    out = publish(symbol)
    with pytest.raises(WriteRefused) as refused:
        await sink.write([out])
    assert refused.value.touched == (out,)
    assert refused.value.landed == ()
    async with stream_node_client(stream_node) as direct:
        found = [fields for _id, fields in await direct.xrange(KEYS.stream)]
    assert [e["seq"] for e in found] == [str(out.seq)]  # the entry; its hash never written


async def test_landed_finishes_an_uncertain_write_without_a_second_entry(
    parts: tuple[ClusterSink, Any],
) -> None:
    sink, client = parts
    half, none = (publish(s) for s in spread(12)[:2])
    # `half`: its entry appended, the connection lost before the hash step; `none`: the
    # connection lost before its entry was appended
    await client.xadd(KEYS.stream, half.audit_fields())
    assert await sink.landed([half, none])
    counts = Counter((e["symbol"], e["seq"]) for e in await entries(client))
    assert counts == {(half.symbol, str(half.seq)): 1, (none.symbol, str(none.seq)): 1}
    for out in (half, none):
        assert await client.hget(KEYS.proposal(out.symbol), "seq") == str(out.seq)


async def test_group_writes_are_fenced_on_the_leases_node(bare_cluster: ClusterTopology) -> None:
    slots = SlotMap(endpoint_from_url(bare_cluster.url))
    lease, epoch_key = KEYS.lease("g", 7), KEYS.epoch("g", 7)

    def fence(_symbol: str) -> FenceToken:
        return FenceToken(lease, epoch_key, "me", 5)

    sink = ClusterSink(slots, KEYS, proposal_ttl=90.0, fence=fence)
    client = RedisCluster.from_url(bare_cluster.url, decode_responses=True)
    try:
        first, second = (publish(s) for s in spread(12)[:2])
        with pytest.raises(Fenced) as refused:  # nobody holds the lease
            await sink.write([first])
        assert refused.value.landed == () and refused.value.touched == ()
        assert await entries(client) == []
        assert not await client.exists(KEYS.proposal(first.symbol))
        await client.set(lease, "me", px=10_000)
        await client.set(epoch_key, "5")
        await sink.write([second])
        (entry,) = await entries(client)
        assert (entry["instance"], entry["lease_epoch"], entry["seq"]) == (
            "me",
            "5",
            str(second.seq),
        )
        assert await client.hget(KEYS.proposal(second.symbol), "seq") == str(second.seq)
        await client.set(epoch_key, "6")  # taken over: the old epoch is refused
        with pytest.raises(Fenced):
            await sink.write([publish(spread(12)[3])])
        assert len(await entries(client)) == 1
    finally:
        sink.close()
        await client.aclose()
