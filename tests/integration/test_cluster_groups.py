"""Publisher groups on a Redis Cluster (INTERFACE §6 and §7): three members as
subprocesses against a 3-primary cluster (no replicas), the leases routed per partition,
the fence checked on the lease's node before each write (`cluster_fence`). Valkey only,
to keep the tier short (the group scenarios on one server do the same).

Every symbol is published by its partition's owner only; a member killed (-9) has its
partitions owned again within TTL + 1 s; every final input is published; no (symbol,
seq) twice; per partition, epochs never decrease in stream order.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio.cluster import RedisCluster

from harvest_async.core.partition import partition_of
from tests.support.cluster import ClusterTopology, cluster_flavours
from tests.support.group import (
    GROUP,
    KEYS,
    PARTITIONS,
    TTL,
    Load,
    Member,
    audit,
    epochs_never_decrease,
    final_inputs_published,
    no_duplicate_seq,
    seed,
    symbols,
)

pytestmark = pytest.mark.slow

SYMS = symbols(300)
_VALKEY = [b for b in cluster_flavours() if b.flavour == "valkey"]


@pytest.fixture(params=_VALKEY or [None], ids=lambda b: b.id if b else "none")
def cluster(request: pytest.FixtureRequest) -> Iterator[ClusterTopology]:
    if request.param is None:
        pytest.skip("no valkey-server: the cluster group scenario runs on Valkey")
    with ClusterTopology(request.param) as topology:
        yield topology


@pytest.fixture
async def client(cluster: ClusterTopology) -> AsyncIterator[Any]:
    c = RedisCluster.from_url(cluster.url, decode_responses=True)
    try:
        yield c
    finally:
        await c.aclose()


@pytest.fixture
def members(tmp_path: Path) -> Iterator[dict[str, Member]]:
    started: dict[str, Member] = {}
    yield started
    for m in started.values():
        if m.proc is not None and m.proc.poll() is None:
            m.proc.kill()
            m.proc.wait(5)


async def holders(client: Any) -> list[str | None]:
    async with client.pipeline(transaction=False) as pipe:
        for p in range(PARTITIONS):
            pipe.get(KEYS.lease(GROUP, p))
        return list(await pipe.execute())


async def wait_owned(client: Any, names: list[str], limit: float = 30.0) -> list[str | None]:
    deadline = time.monotonic() + limit
    while True:
        owners = await holders(client)
        if set(owners) == set(names):
            return owners
        if time.monotonic() > deadline:
            raise AssertionError(f"partitions not owned by {names}: {set(owners)}")
        await anyio.sleep(0.1)


async def test_a_group_on_a_cluster_shares_and_takes_over(
    cluster: ClusterTopology, client: Any, tmp_path: Path, members: dict[str, Member]
) -> None:
    await seed(client, SYMS)
    names = ["a", "b", "c"]
    for name in names:
        members[name] = Member(name, cluster.url, tmp_path).start()
    await wait_owned(client, names)
    await anyio.sleep(1.0)  # the takeovers' first passes
    load = Load(client, SYMS, 300)
    await load.run(3.0)
    await final_inputs_published(client, load)
    owners = await holders(client)
    entries = await audit(client)
    assert entries
    for _, f in entries[-200:]:  # the steady state: each by its partition's owner
        assert owners[partition_of(f["symbol"], PARTITIONS)] == f["instance"]

    lost = {p for p, who in enumerate(owners) if who == "a"}
    async with anyio.create_task_group() as tg:
        tg.start_soon(load.run, 5.0)
        await anyio.sleep(1.0)
        members["a"].kill()
        killed = time.monotonic()
        while True:
            now_owners = await holders(client)
            if all(now_owners[p] in ("b", "c") for p in lost):
                took = time.monotonic() - killed
                break
            assert time.monotonic() - killed < TTL + 1.0, f"not taken over: {now_owners}"
            await anyio.sleep(0.05)
    assert took <= TTL + 1.0
    await final_inputs_published(client, load)
    everything = await audit(client)
    no_duplicate_seq(everything)
    epochs_never_decrease(everything)
    assert "Traceback" not in members["b"].log() + members["c"].log()
