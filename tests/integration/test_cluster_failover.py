"""A Redis Cluster failover as the service reports it (issue 14; the scenarios of
test_cluster.py on the same 3-primary cluster with a replica each, per flavour): the
gaps of one node (its loss, its listener's resubscription) resync only the symbols with
a key in the slots it serves, and the log says what happened once.

1. A primary holding neither the audit stream's nor the liveness key's slot killed, its
   replica promoted: the resync reads only the symbols with a key on it; one WARNING
   naming it, one topology line, one line when every slot is served again.
2. One primary's subscription killed (CLIENT KILL): its listener's resync reads only the
   symbols with a key on that primary.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from harvest_async.redis_io.cluster.topology import slot_of
from tests.integration.test_cluster import (
    COUNT,
    SYMBOLS,
    converge,
    keys_of,
    no_duplicates,
    producer,
    seed,
    write_until,
)
from tests.support.cluster import ClusterTopology, cluster_topology
from tests.support.live import KEYS, make_settings, put_inputs, running, wait_for
from tests.support.sentinel import _text

__all__ = ["cluster_topology"]  # the fixture, used by name below

pytestmark = pytest.mark.slow


def served_by(topology: ClusterTopology, port: int) -> set[int]:
    """The slots the primary at `port` serves (CLUSTER SLOTS)."""
    rows = _text(topology.live()[0].command("CLUSTER", "SLOTS"))
    return {
        slot
        for first, last, owner, *_ in rows
        if int(owner[1]) == port
        for slot in range(int(first), int(last) + 1)
    }


async def test_failover_resyncs_only_the_lost_nodes_symbols_and_logs_it_once(
    cluster_topology: ClusterTopology, caplog: pytest.LogCaptureFixture
) -> None:
    """A primary holding neither the audit stream's nor the liveness key's slot killed
    while inputs change, its replica promoted: the resyncs read only the symbols with a
    key in its slots (not every symbol), every symbol converges, no audit entry is
    written twice, and the log says it once: one WARNING naming the node, one topology
    line (which node replaced which, K of N symbols), one INFO when every slot is
    served again."""
    caplog.set_level(logging.INFO, logger="harvest_async")
    topology = cluster_topology
    settings = make_settings(
        topology.url, SYMBOLS="*", CANARY_TIMEOUT_SEC="2", MAX_PUBLISH_AGE_SEC="600"
    )
    shared = {slot_of(KEYS.stream), slot_of(KEYS.liveness(settings.instance))}
    holders = {topology.slot_owner(s) for s in shared}
    victim = next(p for p in topology.primaries() if p not in holders)
    port = topology.port_of(victim)
    lost_slots = served_by(topology, port)
    expected = {s for s in SYMBOLS if any(slot_of(k) in lost_slots for k in keys_of(s))}
    async with producer(topology.url) as client:
        pnl = await seed(client)
        async with running(settings) as runner:
            await converge(client, pnl, 20.0)
            # the symbols resynced: a resync after a gap checks their proposals (the
            # changes' rounds do not)
            checked: set[str] = set()
            passes: list[int] = []
            read_published = runner.reader.read_published

            async def counting(symbols: Any) -> Any:
                assert symbols is not None  # not a full read
                checked.update(symbols)
                passes.append(len(symbols))
                return await read_published(symbols)

            runner.reader.read_published = counting  # type: ignore[method-assign]
            caplog.clear()
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(write_until, client, pnl, stop)
                await anyio.sleep(0.3)
                await anyio.to_thread.run_sync(topology.failover_by_kill, victim)
                await anyio.sleep(0.5)
                stop.set()

            def topology_lines() -> list[logging.LogRecord]:
                return [r for r in caplog.records if "cluster topology changed" in r.getMessage()]

            async def settled() -> bool:
                return bool(topology_lines()) and any(
                    "every slot served again" in r.getMessage() for r in caplog.records
                )

            await wait_for(settled, "the topology and recovery lines", limit=15.0)
            for symbol in SYMBOLS[::7]:
                pnl[symbol] = round(pnl[symbol] + 0.5, 2)
                await put_inputs(client, symbol, pnl=pnl[symbol])
            await converge(client, pnl, 20.0)
        await no_duplicates(client)
    records = [r for r in caplog.records if r.name.startswith("harvest_async")]
    warnings = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    (line,) = topology_lines()
    recovered = [r.getMessage() for r in records if "served again" in r.getMessage()]
    resynced = [r.getMessage() for r in records if r.__dict__.get("event") == "resync"]
    print(
        f"victim :{port} ({len(lost_slots)} slots): {len(expected)} of {COUNT} symbols have a key "
        f"there; {len(checked)} resynced (passes: {passes}); lines:\n  "
        + "\n  ".join([*warnings, *resynced, *recovered])
    )
    assert len(warnings) == 1 and f"127.0.0.1:{port} lost" in warnings[0], warnings
    assert resynced == [line.getMessage()]
    assert f"127.0.0.1:{port} (lost) -> " in line.getMessage()
    assert line.__dict__["symbols"] == COUNT
    assert line.__dict__["resynced"] <= len(expected) + 20
    assert len(recovered) == 1 and f"127.0.0.1:{port} replaced by" in recovered[0]
    # the symbols with a key on the lost node (4 keys without a hash tag, each on one of
    # 3 primaries: about 1 - (2/3)**4 = 80% of them), and a few dirty anyway; not all
    assert expected <= checked
    assert len(checked) <= len(expected) + 20 < COUNT


async def test_one_primarys_resubscription_resyncs_only_its_symbols(
    cluster_topology: ClusterTopology, caplog: pytest.LogCaptureFixture
) -> None:
    """One primary's notification connection killed: its listener resubscribes, and the
    resync of that gap reads only the symbols with a key in the slots it serves (the
    other listeners lost nothing); on one server the same gap is for every symbol."""
    caplog.set_level(logging.INFO, logger="harvest_async")
    topology = cluster_topology
    settings = make_settings(topology.url, SYMBOLS="*", MAX_PUBLISH_AGE_SEC="600")
    node = topology.primaries()[0]
    port = topology.port_of(node)
    mine = served_by(topology, port)
    expected = {s for s in SYMBOLS if any(slot_of(k) in mine for k in keys_of(s))}
    async with producer(topology.url) as client:
        pnl = await seed(client)
        async with running(settings) as runner:
            await converge(client, pnl, 20.0)
            checked: list[str] = []
            read_published = runner.reader.read_published

            async def counting(symbols: Any) -> Any:
                checked.extend(symbols)
                return await read_published(symbols)

            runner.reader.read_published = counting  # type: ignore[method-assign]
            caplog.clear()
            node.command("CLIENT", "KILL", "TYPE", "pubsub")

            def lines() -> list[logging.LogRecord]:
                return [r for r in caplog.records if "resync (resubscribed)" in r.getMessage()]

            async def resynced() -> bool:
                return bool(lines()) and bool(checked)

            await wait_for(resynced, "the resubscription's resync", limit=10.0)
            symbol = sorted(expected)[0]
            pnl[symbol] = round(pnl[symbol] + 0.5, 2)
            await put_inputs(client, symbol, pnl=pnl[symbol])
            await converge(client, pnl, 10.0)
    (line,) = lines()
    print(f"{len(expected)} of {COUNT} symbols have a key on :{port}; {line.getMessage()}")
    assert line.__dict__["resynced"] == len(expected) < COUNT
    assert set(checked) == expected
