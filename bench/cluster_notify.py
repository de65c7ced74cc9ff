"""Keyspace notifications on a Redis Cluster: redis-py's own listener against ours.

Run: `.venv/bin/python bench/cluster_notify.py [--rates 20,200,1000] [--seconds 4]
[--flavour redis|valkey]`. Prints numbers, asserts nothing.

Issue 14 asked whether redis-py's `RedisCluster.keyspace_notifications()` meets the
service's latency before writing a listener per primary. redis-py's reads the primaries'
subscriptions in turn, waiting up to 0.1 s on each (`get_message`); ours
(`ClusterSource`) runs one subscription per primary concurrently. On a private
3-primary cluster both subscribe to the position keys; the generator rewrites position
hashes at a steady rate, round-robin over symbols whose keys live on every node
(per-node clients on unix sockets), and each notification's delay is its arrival less
the HSET's send time: overall and per node. The two listeners run one after the other
on the same writes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support

from harness import pct

from harvest_async.core.ports import Changed, Event
from harvest_async.redis_io.cluster.cluster_notifications import ClusterSource
from harvest_async.redis_io.cluster.topology import SlotMap, slot_of
from harvest_async.redis_io.wire import endpoint_from_url
from tests.support.cluster import ClusterTopology, cluster_flavours
from tests.support.live import KEYS

SYMBOLS = [f"N{i:03d}USDT" for i in range(300)]


class Writes:
    """The generator's side: sends, and pairs each arrival with its send."""

    def __init__(self, topology: ClusterTopology) -> None:
        self.topology = topology
        self.clients: dict[int, aioredis.Redis] = {}
        self.node_of = {}
        for server in topology.primaries():
            self.clients[topology.port_of(server)] = aioredis.Redis(
                unix_socket_path=server.unix_socket
            )
        for symbol in SYMBOLS:
            owner = topology.slot_owner(slot_of(KEYS.position(symbol)))
            self.node_of[symbol] = topology.port_of(owner)
        self.sent: dict[str, float] = {}
        self.seen: list[tuple[float, int]] = []  # (delay s, node port)

    def arrived(self, symbol: str) -> None:
        at = self.sent.pop(symbol, None)
        if at is not None:
            self.seen.append((time.perf_counter() - at, self.node_of[symbol]))

    async def run(self, rate: int, seconds: float) -> None:
        self.seen.clear()
        started, done = time.perf_counter(), 0
        while (elapsed := time.perf_counter() - started) < seconds:
            while done < int(elapsed * rate):
                symbol = SYMBOLS[done % len(SYMBOLS)]
                self.sent[symbol] = time.perf_counter()
                await self.clients[self.node_of[symbol]].hset(
                    KEYS.position(symbol), "unrealized_pnl", str(done)
                )
                done += 1
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.5)  # the last arrivals

    async def close(self) -> None:
        for client in self.clients.values():
            await client.aclose()


async def ours(url: str, writes: Writes, rate: int, seconds: float) -> None:
    slots = SlotMap(endpoint_from_url(url))

    def emit(event: Event) -> None:
        if isinstance(event, Changed) and event.kind == "position":
            writes.arrived(event.symbol)

    source = ClusterSource(url, None, KEYS, slots, instance="bench-notify")
    async with anyio.create_task_group() as tg:
        await tg.start(source.run, emit)
        await writes.run(rate, seconds)
        tg.cancel_scope.cancel()


async def redis_pys(url: str, writes: Writes, rate: int, seconds: float) -> None:
    client = RedisCluster.from_url(url, decode_responses=True)
    # its subscriptions go to the primaries the client knows: none before it has read the
    # slot map (redis-py 8.1 subscribes nowhere, silently, on a fresh client)
    await client.initialize()
    notifications: Any = client.keyspace_notifications()
    prefix = KEYS.position_prefix
    await notifications.subscribe_keyspace(prefix + "*")

    async def listen() -> None:
        while True:
            note = await notifications.get_message(timeout=1.0)
            if note is not None and str(note.key).startswith(prefix):
                writes.arrived(str(note.key)[len(prefix) :])

    task = asyncio.create_task(listen())
    await asyncio.sleep(0.5)  # subscribed on every primary
    try:
        await writes.run(rate, seconds)
    finally:
        task.cancel()
        await notifications.aclose()
        await client.aclose()


def report(name: str, rate: int, writes: Writes) -> None:
    delays = [d * 1000 for d, _ in writes.seen]
    nodes = "; ".join(
        f":{port} p50 {pct(v, 0.5):.2f} ms"
        for port in sorted(writes.clients)
        if (v := [d * 1000 for d, p in writes.seen if p == port])
    )
    print(
        f"  {name:<22} {rate:>5}/s: p50 {pct(delays, 0.5):7.2f} ms, p99 "
        f"{pct(delays, 0.99):7.2f} ms, max {max(delays, default=float('nan')):7.2f} ms "
        f"(n={len(delays)}); per node: {nodes}"
    )


async def main_async(topology: ClusterTopology, args: argparse.Namespace) -> None:
    writes = Writes(topology)
    listeners: list[tuple[str, Callable[..., Any]]] = [
        ("ours (one per primary)", ours),
        ("redis-py's", redis_pys),
    ]
    try:
        for rate in args.rates:
            for name, listener in listeners:
                await listener(topology.url, writes, rate, args.seconds)
                report(name, rate, writes)
    finally:
        await writes.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="20,200,1000")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--flavour", choices=["redis", "valkey"])
    args = parser.parse_args()
    args.rates = [int(r) for r in args.rates.split(",")]
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for binary in cluster_flavours():
        if args.flavour and binary.flavour != args.flavour:
            continue
        print(f"{binary.id}: 3 primaries, {len(SYMBOLS)} symbols")
        with ClusterTopology(binary, primaries=3) as topology:
            asyncio.run(main_async(topology, args))


if __name__ == "__main__":
    main()
