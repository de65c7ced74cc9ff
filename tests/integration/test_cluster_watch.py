"""`harvest-async watch` on a real 3-primary Redis Cluster with one replica per primary
(`tests.support.cluster`), once per flavour that can build one (Redis 7.0+, Valkey).

1. `watch --once` shows the proposals of symbols whose keys live on every primary.
2. The live watcher (what the live view draws, in-process: `watcher_for` as `run_watch`
   builds it) is told by notifications of a change on every primary, not only the seed's;
   marks the rows as no live advice when the publisher's liveness key goes; polls (naming
   the node) when one primary's notifications are turned off; follows a slot moved to
   another primary and a primary killed: while it is lost only its rows are marked stale
   (the others follow their changes), and once its replica is promoted watch subscribes
   again on the new primaries and a later change is seen by notification again.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from harvest_async.redis_io.cluster.topology import slot_of
from harvest_async.service.app import serve
from harvest_async.tools.embedded_server import EmbeddedRedis
from harvest_async.tools.watch import Watcher
from harvest_async.tools.watch import watcher as watcher_module
from harvest_async.tools.watch.live import watcher_for
from tests.integration.test_cluster import producer
from tests.support.cluster import ClusterTopology, cluster_topology
from tests.support.live import KEYS, make_settings, put_inputs
from tests.support.sentinel import _text

__all__ = ["cluster_topology"]  # the fixture, used by name below

pytestmark = pytest.mark.slow

SYMBOLS = [f"W{i:03d}USDT" for i in range(40)]


def owner(topology: ClusterTopology, symbol: str) -> EmbeddedRedis:
    """The primary holding `symbol`'s proposal hash."""
    return topology.slot_owner(slot_of(KEYS.proposal(symbol)))


def one_per_primary(topology: ClusterTopology) -> dict[int, str]:
    """{a primary's port: a symbol whose proposal lives there}, for every primary."""
    found: dict[int, str] = {}
    for symbol in SYMBOLS:
        found.setdefault(topology.port_of(owner(topology, symbol)), symbol)
    assert len(found) == len(topology.primaries()), found
    return found


async def alive(client: Any, instance: str = "vps-c") -> None:
    """A publisher's liveness key, as the service writes it."""
    key = KEYS.liveness(instance)
    await client.hset(key, mapping={"instance": instance, "last_beat_epoch": repr(time.time())})
    await client.expire(key, 60)


async def publish_proposals(topology: ClusterTopology) -> Any:
    """Every symbol's inputs written, the service run once on the cluster."""
    settings = make_settings(topology.url, SYMBOLS="*")
    async with producer(topology.url) as client:
        for symbol in SYMBOLS:
            await put_inputs(client, symbol, pnl=5.0)
    await serve(settings, once=True)
    return settings


async def until(check: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    deadline = time.perf_counter() + limit
    while not check():
        if time.perf_counter() > deadline:
            raise AssertionError(f"waited {limit} s for {what}")
        await anyio.sleep(0.02)


def watching(server: EmbeddedRedis) -> bool:
    """Whether watch's subscription (two patterns) is on `server`."""
    clients = str(_text(server.command("CLIENT", "LIST")))
    return any("name=harvest-async-watch" in c and " psub=2 " in c for c in clients.splitlines())


def manual_failover(topology: ClusterTopology, replica: EmbeddedRedis) -> None:
    replica.command("CLUSTER", "FAILOVER")
    deadline = time.perf_counter() + 20
    while topology.role(replica) != "master":
        assert time.perf_counter() < deadline, "the manual failover did not happen"
        time.sleep(0.05)
    topology.wait_ok()


def shows(watcher: Watcher, symbol: str, r_net: str) -> bool:
    row = watcher.model.rows.get(symbol)
    return row is not None and row.fields is not None and row.fields.get("R_net") == r_net


async def test_watch_once_shows_proposals_from_every_primary(
    cluster_topology: ClusterTopology,
) -> None:
    topology = cluster_topology
    await publish_proposals(topology)
    assert len({owner(topology, s).port for s in SYMBOLS}) == 3  # keys on every primary
    async with producer(topology.url) as client:
        await alive(client)
    env = {**os.environ, "REDIS_URL": topology.url, "SYMBOLS": "*"}
    done = await anyio.run_process(
        [sys.executable, "-m", "harvest_async", "watch", "--once"], env=env, check=False
    )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert f"{len(SYMBOLS)} proposals, 0 retracted" in out.splitlines()[0], out
    shown = {line.split()[0] for line in out.splitlines() if line.startswith("W")}
    assert shown == set(SYMBOLS)
    assert "(Redis Cluster)" in out and "publisher: vps-c" in out, out
    assert "NO LIVE PUBLISHER" not in out


async def test_live_watch_follows_every_primary_and_the_topology(
    cluster_topology: ClusterTopology, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no periodic re-read in notify mode: a change is seen by its notification or not at all
    monkeypatch.setattr(watcher_module, "SAFETY_RELOAD_SEC", 1e9)
    topology = cluster_topology
    settings = await publish_proposals(topology)
    seed_port = int(topology.url.rsplit(":", 1)[1].split("/")[0])
    async with (
        producer(topology.url) as client,
        watcher_for(settings) as watcher,
        anyio.create_task_group() as tg,
    ):
        await alive(client)
        tg.start_soon(watcher.run)
        model = watcher.model
        await until(
            lambda: len(model.rows) == len(SYMBOLS) and model.mode == "notify" and model.live(),
            "every proposal, in notify mode, with a live publisher",
        )

        # a change on every primary (the seed's and the others') arrives by notification
        by_port = one_per_primary(topology)
        assert seed_port in by_port and len(by_port) == 3
        for port, symbol in by_port.items():
            await client.hset(KEYS.proposal(symbol), "R_net", "9.25")
            await until(lambda s=symbol: shows(watcher, s, "9.25"), f"{symbol} on :{port}", 3)

        # the publisher's liveness key gone: the rows are no live advice
        await client.delete(KEYS.liveness("vps-c"))
        await until(lambda: model.publisher_down() and not model.live(), "no live publisher")
        await alive(client)
        await until(model.live, "a live publisher again")

        # one primary without notifications: watch polls, and says which node
        other = next(s for s in topology.primaries() if s.port != seed_port)
        other.command("CONFIG", "SET", "notify-keyspace-events", "")
        await until(lambda: model.mode == "poll", "poll mode", 8)
        assert f"at 127.0.0.1:{other.port}" in model.mode_detail, model.mode_detail
        other.command("CONFIG", "SET", "notify-keyspace-events", "KEA")
        await until(lambda: model.mode == "notify", "notify mode again", 8)

        # a slot moved to another primary: its key's changes now notified there
        symbol = by_port[seed_port]
        slot = slot_of(KEYS.proposal(symbol))
        target = next(s for s in topology.primaries() if s.port != seed_port)
        assert await anyio.to_thread.run_sync(topology.move_slots, slot, slot, target) >= 1
        await client.hset(KEYS.proposal(symbol), "R_net", "7.75")
        await until(lambda: shows(watcher, symbol, "7.75"), "the moved key's change", 3)

        # a manual failover (the old primary stays up, a replica now): the slot map's
        # change alone makes watch subscribe on the promoted replica
        promoted = topology.replica_of(target)
        assert not watching(promoted)
        await anyio.to_thread.run_sync(manual_failover, topology, promoted)
        await until(lambda: watching(promoted), "a subscription on the promoted replica", 10)
        await client.hset(KEYS.proposal(symbol), "R_net", "7.5")
        await until(lambda: shows(watcher, symbol, "7.5"), "a change after the failover", 3)

        # a primary killed: only the rows whose proposal key it serves are marked (the
        # header names it), the others stay live and follow their changes; then its
        # replica promoted, the session is back on the new primaries, which include the
        # promoted replica, not subscribed before. Full coverage off and the promotion held
        # back until the checks are done: the other primaries serve meanwhile
        victim = owner(topology, by_port[other.port])
        replica = topology.replica_of(victim)
        for server in topology.primaries():
            server.command("CONFIG", "SET", "cluster-require-full-coverage", "no")
        replica.command("CONFIG", "SET", "cluster-replica-no-failover", "yes")
        on_victim = {s for s in SYMBOLS if owner(topology, s).port == victim.port}
        assert on_victim and on_victim != set(SYMBOLS)
        # a publisher whose liveness key the victim holds: unknown while it is lost, not gone
        beside = next(
            f"vps-{i}"
            for i in range(200)
            if topology.slot_owner(slot_of(KEYS.liveness(f"vps-{i}"))).port == victim.port
        )
        await alive(client, beside)
        await until(
            lambda: beside in {p.instance for p in model.publishers or []}, "its publisher", 15
        )
        downs: list[float] = []  # the whole table marked: must not happen here

        async def note_outage() -> None:
            while True:
                if model.redis_down_since is not None:
                    downs.append(model.redis_down_since)
                await anyio.sleep(0.01)

        tg.start_soon(note_outage)
        victim.kill()
        lost = f"127.0.0.1:{topology.port_of(victim)}"
        await until(lambda: model.lost_nodes == [lost], "the lost primary named", 10)
        assert model.stale == on_victim, model.stale ^ on_victim
        assert model.redis_down_since is None and model.live()
        banner = " ".join(text for text, _style in model.banners(time.time()))
        assert f"node {lost} unreachable: {len(on_victim)} rows stale" in banner, banner
        elsewhere = next(s for s in SYMBOLS if s not in on_victim)
        await client.hset(KEYS.proposal(elsewhere), "R_net", "5.5")
        await until(lambda: shows(watcher, elsewhere, "5.5"), "a change beside the lost node", 5)
        monkeypatch.setattr(watcher_module, "PUBLISHER_SCAN_SEC", 0.2)  # SCANs skip the node
        await anyio.sleep(1.5)
        assert beside in {p.instance for p in model.publishers or []}, model.publishers
        assert model.lost_nodes == [lost] and model.stale == on_victim and model.live()
        replica.command("CONFIG", "SET", "cluster-replica-no-failover", "no")
        await anyio.to_thread.run_sync(topology.wait_ok)
        await until(
            lambda: topology.role(replica) == "master",
            "the replica's promotion",
            20,
        )
        await until(
            lambda: not model.lost_nodes and not model.stale and model.mode == "notify",
            "the session back on the new primaries",
            20,
        )
        assert not downs, f"the whole table marked unreachable: {model.status}"
        moved = by_port[other.port]
        assert owner(topology, moved).port == replica.port
        await client.hset(KEYS.proposal(moved), "R_net", "6.5")
        await until(lambda: shows(watcher, moved, "6.5"), "a change on the promoted replica", 3)
        tg.cancel_scope.cancel()
