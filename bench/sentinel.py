"""Sentinel failover benchmark: how long after a failover every symbol is right again.

Run: `.venv/bin/python bench/sentinel.py [--failovers 3] [--symbols 200] [--flavour redis]`
(`make bench` runs it with the defaults). Prints numbers, asserts nothing.

Per server flavour found (the newest binary of each), a private Sentinel deployment on
loopback (`tests/support/sentinel.py`: one primary, one replica, three sentinels,
down-after 1 s) and the service in this process (REDIS_URL=redis+sentinel://...,
PUBLISH_INTERVAL_SEC=0), a producer rewriting one position every ~5 ms through its own
Sentinel client. Then, `--failovers` times:

1. SENTINEL FAILOVER; "promoted": from the command to the new primary accepting a write;
2. at once, the producer stopped, every symbol's position is rewritten on the new
   primary (a unique PnL each);
3. "converged": from the new primary accepting writes until every symbol's proposal, read
   on the new primary, shows its latest PnL (the service heard +switch-master,
   reconnected, resubscribed and resynced);
4. the old primary is left to be demoted (the sentinels do it at their next INFO, up to
   10 s), and the deployment to settle, before the next failover.

The benchmark, the servers and the service share the machine's CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support

from harvest_async.redis_io.client import REDIS_OR_REPLY_ERRORS, client_for
from harvest_async.service.app import serve
from tests.support.live import connected, make_settings, proposals, put_inputs
from tests.support.sentinel import SentinelTopology, flavours


async def produce(url: str, symbols: list[str], stop: anyio.Event) -> None:
    client = client_for(url, name="bench-producer")
    rng = random.Random(1)
    try:
        while not stop.is_set():
            try:
                await put_inputs(client, rng.choice(symbols), pnl=round(rng.uniform(-2, 12), 2))
            except REDIS_OR_REPLY_ERRORS:
                await anyio.sleep(0.02)
            await anyio.sleep(0.005)
    finally:
        await client.aclose()


async def converge(url: str, want: dict[str, float], limit: float = 30.0) -> float:
    """perf_counter() when every symbol's proposal on `url` shows its PnL in `want`."""
    symbols = sorted(want)
    async with connected(url) as client:
        deadline = time.perf_counter() + limit
        while time.perf_counter() < deadline:
            found = await proposals(client, symbols)
            if all(found[s].get("position_unrealized_pnl") == repr(want[s]) for s in symbols):
                return time.perf_counter()
            await anyio.sleep(0.005)
    raise SystemExit(f"not converged within {limit} s")


async def one_flavour(topology: SentinelTopology, failovers: int, count: int) -> None:
    symbols = [f"B{i:04d}USDT" for i in range(count)]
    async with connected(topology.primary().url) as client:
        for i, symbol in enumerate(symbols):
            await put_inputs(client, symbol, pnl=float(i % 10))
    settings = make_settings(topology.url, SYMBOLS=",".join(symbols), LOG_LEVEL="WARNING")
    promoted: list[float] = []
    converged: list[float] = []
    async with anyio.create_task_group() as tg:
        ready = anyio.Event()

        async def on_ready(_runner: object) -> None:
            ready.set()

        tg.start_soon(partial(serve, settings, on_ready=on_ready, handle_signals=False))
        await ready.wait()
        for n in range(failovers):
            stop = anyio.Event()
            async with anyio.create_task_group() as producing:
                producing.start_soon(produce, topology.url, symbols, stop)
                await anyio.sleep(0.5)
                old = topology.primary()
                asked = time.perf_counter()
                new, accepted = await anyio.to_thread.run_sync(topology.failover)
                stop.set()  # the last changes come next, and nothing after them
            want = {s: round(1000 * (n + 1) + i + 0.25, 2) for i, s in enumerate(symbols)}
            async with connected(new.url) as direct:
                for symbol, pnl in want.items():
                    await put_inputs(direct, symbol, pnl=pnl)
            done = await converge(new.url, want)
            promoted.append(accepted - asked)
            converged.append(done - accepted)
            print(
                f"  failover {n + 1}: promoted in {promoted[-1]:.2f} s, every symbol "
                f"converged {converged[-1]:.2f} s after the new primary accepted writes",
                flush=True,
            )
            await anyio.to_thread.run_sync(topology.wait_demoted, old)
            assert new.port is not None
            await anyio.to_thread.run_sync(partial(topology.wait_settled, new.port, full=False))
        tg.cancel_scope.cancel()
    print(
        f"  converged: p50 {statistics.median(converged):.2f} s, max {max(converged):.2f} s "
        f"over {len(converged)} failovers ({count} symbols); promoted: p50 "
        f"{statistics.median(promoted):.2f} s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failovers", type=int, default=3)
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--flavour", choices=["redis", "valkey"], default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="  %(levelname)s %(name)s: %(message)s")
    print(f"sentinel failover benchmark, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    for binary in flavours():
        if args.flavour and binary.flavour != args.flavour:
            continue
        print(f"{binary.id}:", flush=True)
        with SentinelTopology(binary) as topology:
            asyncio.run(one_flavour(topology, args.failovers, args.symbols))


if __name__ == "__main__":
    main()
