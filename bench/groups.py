"""Publisher groups benchmark (issue 13): aggregate rate with 1, 2, 4 members, and the
takeover time after kill -9.

Run: `.venv/bin/python bench/groups.py` (`--quick` for a smoke run, `--kills N`,
`--flavour valkey`). Prints numbers, asserts nothing. Against a private server
(EmbeddedRedis, unix socket), members as `python -m harvest_async run` with GROUP set
(PARTITIONS=64, LEASE_TTL_SEC=4, PUBLISH_INTERVAL_SEC=0, LOG_LEVEL=WARNING):

1. rate: for 1, 2 and 4 members over 1,000 symbols, steps of input events/s (each event
   rewrites one position hash with a unique, material `unrealized_pnl`), 4 s each; a step
   passes when, once writing stops, every symbol's proposal shows its last input within
   3 s and the members wrote at least 1 proposal per 2 events (coalescing per symbol
   makes fewer writes than events legitimate only when a symbol changes faster than it
   is processed); per step the CPU share of the members (summed), the server and the
   load generator, so the scaling per added core can be read;
2. takeover: 3 members, 300 symbols; `--kills` times: kill -9 a member, at once write a
   new input for every symbol of its partitions, and time (a) until every one of its
   partitions has another holder, (b) until every one of those symbols shows the new
   input; the killed member is started again and the group rebalanced before the next.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis
from e2e import _pairs, market_fields, own_cpu, position_fields
from harness import ServiceProcess, cpu_seconds, pct, pick_binary

from harvest_async import __version__
from harvest_async.core.keys import Keys
from harvest_async.core.partition import partition_of
from harvest_async.redis_io.wire import Wire, endpoint_from_url
from harvest_async.tools.embedded_server import EmbeddedRedis

KEYS = Keys()
GROUP = "bench"
PARTITIONS = 64
TTL = 4.0


def member(url: str, logs: Path, name: str) -> ServiceProcess:
    """One publisher-group member (INTERFACE §6), started."""
    return ServiceProcess(
        url, logs, name, GROUP=GROUP, PARTITIONS=str(PARTITIONS), LEASE_TTL_SEC=str(TTL)
    ).start()


async def holders(client: aioredis.Redis) -> list[str | None]:
    return list(await client.mget([KEYS.lease(GROUP, p) for p in range(PARTITIONS)]))


async def wait_spread(client: aioredis.Redis, names: list[str], limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    even = PARTITIONS / len(names)
    while True:
        owners = await holders(client)
        if set(owners) == set(names) and all(abs(owners.count(n) - even) <= 2 for n in names):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"partitions not spread over {names}")
        await asyncio.sleep(0.05)


async def seed(client: aioredis.Redis, symbols: list[str]) -> None:
    now = time.time()
    async with client.pipeline(transaction=False) as pipe:
        for sym in symbols:
            pipe.hset(KEYS.marketstate(sym), mapping=market_fields(now))
            pipe.hset(KEYS.risk(sym), mapping={"stop_dist_pct": "0.02"})
            pipe.hset(KEYS.position(sym), mapping=position_fields(sym, "0.5", now))
        await pipe.execute()


class Inputs:
    """Unique, material pnl values per symbol (each publish echoes the latest)."""

    def __init__(self) -> None:
        self.counter = 0
        self.steps: dict[str, int] = {}
        self.last: dict[str, str] = {}

    def next(self, symbol: str) -> dict[str, str]:
        self.counter += 1
        # per symbol, consecutive values differ by >= 0.25 (R by >= 0.125 > R_EPS): material
        step = self.steps[symbol] = self.steps.get(symbol, 0) + 1
        pnl = repr(1.0 + (step % 40) * 0.25 + self.counter * 1e-9)
        self.last[symbol] = pnl
        return position_fields(symbol, pnl, time.time())


async def drive(
    wire: Wire, inputs: Inputs, symbols: list[str], rate: float, seconds: float
) -> float:
    """Input events at `rate` for `seconds` (prebuilt RESP on a wire connection of its
    own, the load generator's cheapest way, as bench/e2e.py); the rate achieved."""
    rng = random.Random(1)
    started = time.perf_counter()
    sent = 0
    total = int(rate * seconds)
    while sent < total:
        now = time.perf_counter()
        due = min(int((now - started) * rate), total) - sent
        if due > 0:
            parts = []
            for _ in range(min(due, 5000)):
                sym = symbols[rng.randrange(len(symbols))]
                count, pairs = _pairs(inputs.next(sym))
                key = KEYS.position(sym).encode()
                parts.append(b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%b\r\n%b" % (
                    2 + 2 * count, len(key), key, pairs
                ))  # fmt: skip
            await wire.roundtrip(b"".join(parts), len(parts))
            sent += len(parts)
        await asyncio.sleep(max(0.0, 0.001 - (time.perf_counter() - now)))
    return sent / (time.perf_counter() - started)


async def converged(client: aioredis.Redis, inputs: Inputs, limit: float) -> float | None:
    start = time.perf_counter()
    syms = list(inputs.last)
    while time.perf_counter() - start < limit:
        async with client.pipeline(transaction=False) as pipe:
            for sym in syms:
                pipe.hget(KEYS.proposal(sym), "position_unrealized_pnl")
            got = await pipe.execute()
        if all(g == inputs.last[s] for s, g in zip(syms, got, strict=True)):
            return time.perf_counter() - start
        await asyncio.sleep(0.05)
    return None


async def rate_steps(  # noqa: PLR0917 - a benchmark's knobs
    url: str, server_pid: int, logs: Path, n: int, symbols: list[str], steps: list[float],
    seconds: float,
) -> list[str]:  # fmt: skip
    client = aioredis.Redis.from_url(url, decode_responses=True)
    await client.flushall()
    await seed(client, symbols)
    members = [member(url, logs, f"m{i}") for i in range(n)]
    wire = Wire(endpoint_from_url(url), name="bench-load", timeout=30.0)
    lines = []
    try:
        await wait_spread(client, [m.name for m in members])
        inputs = Inputs()
        await asyncio.sleep(2.0)
        for rate in steps:
            writes0 = await client.xlen(KEYS.stream)
            cpu_m0 = sum(cpu_seconds(m.pid) for m in members)
            cpu_s0, cpu_b0, t0 = cpu_seconds(server_pid), own_cpu(), time.perf_counter()
            achieved = await drive(wire, inputs, symbols, rate, seconds)
            conv = await converged(client, inputs, 3.0)
            writes = await client.xlen(KEYS.stream) - writes0
            wall = time.perf_counter() - t0
            cpu_m = sum(cpu_seconds(m.pid) for m in members) - cpu_m0
            cpu_s, cpu_b = cpu_seconds(server_pid) - cpu_s0, own_cpu() - cpu_b0
            events = achieved * seconds
            ok = conv is not None and writes >= events / 2
            lines.append(
                f"  {n} member(s) step {rate:>6,.0f}/s: achieved {achieved:>6,.0f}/s, "
                f"{writes / seconds:>6,.0f} writes/s, converged "
                f"{'no' if conv is None else f'{conv:.2f} s'}, "
                f"CPU members {cpu_m / wall:.0%} (sum), server {cpu_s / wall:.0%}, "
                f"load generator {cpu_b / wall:.0%} -> {'PASS' if ok else 'fail'}"
            )
            print(lines[-1], flush=True)
            # XLEN: the stream is trimmed at 50,000: reset it between steps
            await client.delete(KEYS.stream)
    finally:
        wire.close()
        for m in members:
            m.stop()
        await client.aclose()
    return lines


async def takeovers(url: str, logs: Path, kills: int) -> tuple[list[float], list[float]]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    await client.flushall()
    symbols = [f"T{i:03d}USDT" for i in range(300)]
    await seed(client, symbols)
    names = ["k0", "k1", "k2"]
    members = {n: member(url, logs, n) for n in names}
    owned_t: list[float] = []
    published_t: list[float] = []
    inputs = Inputs()
    rng = random.Random(7)
    try:
        await wait_spread(client, names)
        for i in range(kills):
            await asyncio.sleep(1.0)
            victim = rng.choice(names)
            owners = await holders(client)
            parts = {p for p, w in enumerate(owners) if w == victim}
            moved = [s for s in symbols if partition_of(s, PARTITIONS) in parts]
            members[victim].kill()
            t0 = time.perf_counter()
            async with client.pipeline(transaction=False) as pipe:
                for sym in moved:
                    pipe.hset(KEYS.position(sym), mapping=inputs.next(sym))
                await pipe.execute()
            owned = published = None
            while owned is None or published is None:
                now = time.perf_counter() - t0
                if now > 30:
                    raise TimeoutError(f"kill {i}: no takeover after 30 s")
                if owned is None:
                    cur = await holders(client)
                    if all(cur[p] not in (None, victim) for p in parts):
                        owned = now
                if published is None:
                    async with client.pipeline(transaction=False) as pipe:
                        for sym in moved:
                            pipe.hget(KEYS.proposal(sym), "position_unrealized_pnl")
                        got = await pipe.execute()
                    if all(g == inputs.last[s] for s, g in zip(moved, got, strict=True)):
                        published = now
                await asyncio.sleep(0.02)
            owned_t.append(owned)
            published_t.append(published)
            print(
                f"  kill {i + 1:2d} ({victim}, {len(parts)} partitions, {len(moved)} symbols): "
                f"owned again {owned:.2f} s, published again {published:.2f} s",
                flush=True,
            )
            members[victim] = member(url, logs, victim)
            await wait_spread(client, names)
    finally:
        for m in members.values():
            m.stop()
        await client.aclose()
    return owned_t, published_t


async def filter_cost(rounds: int = 200) -> float:
    """Seconds per notification of a symbol this member does not own, in the runner
    (Runner.emit: the event hook, the partition lookup, nothing queued)."""
    from types import SimpleNamespace
    from typing import Any

    from harvest_async.core.engine import Engine, EngineConfig
    from harvest_async.core.ports import Changed
    from harvest_async.service.group import GroupMember
    from harvest_async.service.runner import Runner
    from harvest_async.testing import FakeClock, MemorySink, MemoryStore

    async def no_beats() -> dict[str, Any]:
        return {}

    leases: Any = SimpleNamespace(instance="x", group=GROUP)
    member = GroupMember(leases, FakeClock(0.0), no_beats, partitions=PARTITIONS, ttl=TTL)
    store = MemoryStore()
    runner = Runner(
        Engine(EngineConfig()), store, MemorySink(store), FakeClock(0.0),
        symbols=None, reconcile_every=60.0,
    )  # fmt: skip
    member.bind(runner)  # owns nothing: every event is someone else's
    events = [Changed(f"S{i:04d}USDT", "position") for i in range(1000)]
    t0 = time.perf_counter()
    for _ in range(rounds):
        for event in events:
            runner.emit(event)
    assert not runner.rounds.pending
    return (time.perf_counter() - t0) / (rounds * len(events))


def dist(values: list[float]) -> str:
    return (
        f"min {min(values):.2f} s, p50 {pct(values, 0.5):.2f} s, p90 {pct(values, 0.9):.2f} s, "
        f"max {max(values):.2f} s (n={len(values)})"
    )


async def main_async(args: argparse.Namespace) -> None:
    binary = pick_binary(args.flavour)
    steps = [float(s) for s in args.steps.split(",") if s]
    counts = [int(c) for c in args.members.split(",") if c]
    with (
        tempfile.TemporaryDirectory(prefix="harvest-bench-groups-") as tmp,
        EmbeddedRedis(binary) as server,
    ):
        logs = Path(tmp)
        print(
            f"harvest-async {__version__} groups benchmark; Python "
            f"{platform.python_version()}, {binary.id}, {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        per = await filter_cost()
        print(
            f"a notification for a symbol another member owns: {per * 1e6:.2f} us in the "
            f"runner (at 20,000 events/s: {per * 20000:.1%} of a core per member)",
            flush=True,
        )
        symbols = [f"S{i:04d}USDT" for i in range(args.symbols)]
        for n in counts:
            await rate_steps(server.url, server.pid, logs, n, symbols, steps, args.seconds)
        if args.kills:
            print(f"takeover: 3 members, 300 symbols, LEASE_TTL_SEC={TTL:g}, kill -9:", flush=True)
            owned, published = await takeovers(server.url, logs, args.kills)
            print(f"partitions owned again: {dist(owned)}")
            print(f"symbols published again: {dist(published)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: short steps, 3 kills")
    p.add_argument("--flavour", default="redis", help="redis or valkey (default redis)")
    p.add_argument("--members", default="1,2,4")
    p.add_argument("--symbols", type=int, default=1000)
    p.add_argument("--steps", default="2000,4000,6000,8000")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--kills", type=int, default=20)
    args = p.parse_args()
    if args.quick:
        args.steps, args.seconds, args.kills = "2000", 2.0, 3
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
