"""Redis Cluster benchmark: input change -> proposal written, per node and overall.

Run: `.venv/bin/python bench/cluster.py [--rates 500,1000,2000,4000] [--seconds 4]
[--symbols 1000] [--flavour redis|valkey] [--members 3] [--primaries N] [--baseline]`.
Prints numbers, asserts nothing. `--members N` (N > 1) runs N services as one publisher
group (GROUP=bench). `--baseline`: one plain server (no cluster) on the same harness,
for the one-server numbers on the same machine at the same time.

A private 3-primary cluster (no replicas, `tests/support/cluster.py`), the service as
its own process (`python -m harvest_async run`, REDIS_CLUSTER detected, SYMBOLS=*,
PUBLISH_INTERVAL_SEC=0, LOG_LEVEL=WARNING), 1,000 symbols seeded. Then per rate step:
the load generator rewrites position hashes on the primaries serving them (what is due
every millisecond in one pipeline per node, the nodes in parallel), each with a unique
`unrealized_pnl` (a material change) that the proposal echoes, and reads the
audit stream (XREAD BLOCK on the stream's node), pairing each entry with the HSET that
caused it: latency = HSET sent -> audit entry read, reported overall and per node (the
node holding the position key, i.e. the listener that heard it). A step passes when p99 <
100 ms and, once writing stops, every symbol's proposal shows its last input within 3 s.
The benchmark, the servers and the service share the machine's CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support

from harness import pct

from harvest_async.redis_io.cluster.topology import slot_of
from harvest_async.tools.embedded_server import EmbeddedRedis
from tests.support.cluster import ClusterTopology, cluster_flavours
from tests.support.live import KEYS, market, position, risk

ROOT = Path(__file__).resolve().parent.parent


class OneServer:
    """The harness's view of one plain server, shaped as the cluster fixture (--baseline)."""

    def __init__(self, binary: Any) -> None:
        self.server = EmbeddedRedis(binary, port=0)

    def __enter__(self) -> OneServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    @staticmethod
    def port_of(server: EmbeddedRedis) -> int:
        assert server.port is not None
        return server.port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port_of(self.server)}/0"

    def primaries(self) -> list[EmbeddedRedis]:
        return [self.server]

    def slot_owner(self, _slot: int) -> EmbeddedRedis:
        return self.server


class Load:
    def __init__(self, topology: ClusterTopology, symbols: list[str]) -> None:
        self.topology = topology
        self.symbols = symbols
        self.clients: dict[int, aioredis.Redis] = {}  # port -> a client of that node
        self.node_of: dict[str, int] = {}
        self.sent: dict[tuple[str, str], tuple[float, int]] = {}
        self.seen: list[tuple[float, int]] = []  # (latency s, node port)
        self.last: dict[str, str] = {}
        self.n = 0

    async def open(self) -> None:
        for server in self.topology.primaries():
            port = self.topology.port_of(server)
            self.clients[port] = aioredis.Redis(unix_socket_path=server.unix_socket)
        for symbol in self.symbols:
            owner = self.topology.slot_owner(slot_of(KEYS.position(symbol)))
            self.node_of[symbol] = self.topology.port_of(owner)

    def client_for(self, key: str) -> aioredis.Redis:
        return self.clients[self.topology.port_of(self.topology.slot_owner(slot_of(key)))]

    async def seed(self) -> None:
        for symbol in self.symbols:
            for key, fields in (
                (KEYS.marketstate(symbol), market()),
                (KEYS.risk(symbol), risk()),
                (KEYS.position(symbol), {**position(1.0, symbol)}),
            ):
                await self.client_for(key).hset(key, mapping=fields)  # type: ignore[arg-type]

    async def change_many(self, symbols: list[str]) -> None:
        """What is due goes out together, one pipeline per node (the nodes in parallel):
        a generator awaiting each HSET in turn, not the service, was the limit at high
        rates. Each change is stamped when its pipeline is sent."""
        by_node: dict[int, list[str]] = {}
        for symbol in symbols:
            by_node.setdefault(self.node_of[symbol], []).append(symbol)

        async def send(port: int, batch: list[str]) -> None:
            async with self.clients[port].pipeline(transaction=False) as pipe:
                sent = time.perf_counter()
                for symbol in batch:
                    self.n += 1
                    pnl = repr(1.0 + 0.5 * self.n)
                    self.sent[(symbol, pnl)] = (sent, port)
                    self.last[symbol] = pnl
                    pipe.hset(
                        KEYS.position(symbol),
                        mapping={"unrealized_pnl": pnl, "current_price": repr(100.0 + float(pnl))},
                    )
                await pipe.execute()

        await asyncio.gather(*(send(port, batch) for port, batch in by_node.items()))

    async def read_stream(self, stop: asyncio.Event) -> None:
        client = self.client_for(KEYS.stream)
        last = "$"
        while not stop.is_set():
            reply: Any = await client.xread({KEYS.stream: last}, block=200, count=1000)
            now = time.perf_counter()
            for _name, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    symbol = fields.get(b"symbol", b"").decode()
                    pnl = fields.get(b"position_unrealized_pnl", b"").decode()
                    hit = self.sent.pop((symbol, pnl), None)
                    if hit is not None:
                        self.seen.append((now - hit[0], hit[1]))

    async def converged(self, limit: float) -> float | None:
        started = time.perf_counter()
        while time.perf_counter() - started < limit:
            late = 0
            for symbol, pnl in self.last.items():
                key = KEYS.proposal(symbol)
                got = await self.client_for(key).hget(key, "position_unrealized_pnl")
                late += got is None or got.decode() != pnl
            if not late:
                return time.perf_counter() - started
            await asyncio.sleep(0.05)
        return None


async def step(load: Load, rate: int, seconds: float) -> dict[str, Any]:
    load.seen.clear()
    load.sent.clear()
    load.last.clear()
    stop = asyncio.Event()
    reader = asyncio.create_task(load.read_stream(stop))
    started = time.perf_counter()
    done = 0
    i = 0
    while (elapsed := time.perf_counter() - started) < seconds:
        due = int(elapsed * rate)
        batch = []
        while done < due:
            batch.append(load.symbols[i % len(load.symbols)])
            i += 7
            done += 1
        await load.change_many(batch)
        await asyncio.sleep(0.001)
    converged = await load.converged(3.0)
    await asyncio.sleep(0.3)
    stop.set()
    await reader
    lat = [s * 1000 for s, _ in load.seen]
    per_node = {
        port: [s * 1000 for s, p in load.seen if p == port] for port in sorted(load.clients)
    }
    return {
        "rate": rate,
        "achieved": done / seconds,
        "p50": pct(lat, 0.5),
        "p99": pct(lat, 0.99),
        "per_node": {p: (pct(v, 0.5), pct(v, 0.99), len(v)) for p, v in per_node.items()},
        "converged": converged,
        "paired": len(lat),
    }


async def run(topology: ClusterTopology, args: argparse.Namespace) -> None:
    symbols = [f"B{i:04d}USDT" for i in range(args.symbols)]
    load = Load(topology, symbols)
    await load.open()
    await load.seed()
    env = {
        **os.environ,
        "REDIS_URL": topology.url,
        "SYMBOLS": "*",
        "PUBLISH_INTERVAL_SEC": "0",
        "LOG_LEVEL": "WARNING",
    }
    if args.members > 1:  # a publisher group (INTERFACE §6) sharing the symbols
        env["GROUP"] = "bench"
    services = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "harvest_async",
            "run",
            env={**env, "INSTANCE": f"bench-cluster-{i}"},
            cwd=ROOT,
        )
        for i in range(args.members)
    ]
    try:
        await asyncio.sleep(3.0 + 2.0 * (args.members > 1))  # startup (and partitions)
        load.last = {s: repr(1.0) for s in symbols}
        first = await load.converged(20.0)
        print(f"  startup: every one of {len(symbols)} symbols published ({first})")
        for rate in args.rates:
            r = await step(load, rate, args.seconds)
            ok = r["p99"] < 100 and r["converged"] is not None
            nodes = "; ".join(
                f":{p} p50 {a:.2f} p99 {b:.2f} ms (n={n})" for p, (a, b, n) in r["per_node"].items()
            )
            conv = "no" if r["converged"] is None else f"{r['converged']:.2f} s"
            print(
                f"  {rate:>5}/s (achieved {r['achieved']:.0f}): p50 {r['p50']:.2f} ms, "
                f"p99 {r['p99']:.2f} ms, converged {conv}, {'PASS' if ok else 'FAIL'}"
            )
            print(f"         per node: {nodes}")
    finally:
        for service in services:
            service.terminate()
        for service in services:
            await service.wait()
        for client in load.clients.values():
            await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="500,1000,2000,4000")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--flavour", choices=["redis", "valkey"])
    parser.add_argument("--members", type=int, default=1, help="> 1: a publisher group")
    parser.add_argument("--primaries", type=int, default=3)
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="one plain server (no cluster), the same harness: the one-server numbers on "
        "the same machine at the same time",
    )
    args = parser.parse_args()
    args.rates = [int(r) for r in args.rates.split(",")]
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for binary in cluster_flavours():
        if args.flavour and binary.flavour != args.flavour:
            continue
        if args.baseline:
            print(f"{binary.id}: one server (baseline), {args.symbols} symbols")
            with OneServer(binary) as one:
                asyncio.run(run(one, args))  # type: ignore[arg-type]
            continue
        print(
            f"{binary.id}: {args.primaries} primaries, {args.symbols} symbols, "
            f"{args.members} member(s)"
        )
        with ClusterTopology(binary, primaries=args.primaries) as topology:
            asyncio.run(run(topology, args))


if __name__ == "__main__":
    main()
