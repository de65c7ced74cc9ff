"""Both regimes in one command: floor 0 (bench/e2e.py's latency and sustained-rate phases)
and the production floor (issue 12), plus startup and memory at 10,000 symbols.

Run: `.venv/bin/python bench/e2e_floor.py [--quick] [--skip-floor0]`. Prints numbers,
asserts nothing. Against a private server (EmbeddedRedis, unix socket):

1. floor 0: the raw HSET -> notification floor, then bench/e2e.py's 1,000 ev/s latency
   phase and its rate steps (`--floor0-steps`);
2. production floor: the service with PUBLISH_INTERVAL_SEC=10 over 1,000 busy symbols
   whose positions change round-robin at a background rate (each a material change, so
   all but the first per 10 s are deferred), and meanwhile every 50 ms a material change
   on a quiet symbol (one that has not published for > 10 s: no floor applies). Per rate:
   the probe's p50/p99 (HSET -> its audit entry seen), the service's CPU per input event
   (/proc/<pid>/stat over the phase / events sent), and whether every busy symbol shows
   its last input within floor + 1 s after the load stops;
3. startup: 10,000 symbols preloaded, then the service launched: seconds until it is
   ready (its liveness key, written after the startup pass has read, computed and
   published every symbol), minus the same on an empty server (interpreter and imports);
4. memory per tracked symbol at 10,000 symbols (bench/e2e.py's measure).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).parent))

import e2e
from e2e import (
    KEYS,
    Tracker,
    _pairs,
    position_fields,
    wait_until,
)
from harness import ServiceProcess, cpu_seconds, ms, pct, pick_binary

from harvest_async import __version__
from harvest_async.redis_io.wire import Wire, endpoint_from_url
from harvest_async.tools.embedded_server import EmbeddedRedis
from harvest_async.tools.simulate import Simulator, symbols_for

FLOOR = 10.0
PROBE_EVERY = 0.05


def _hset(symbol: str, marker: str, wall: float) -> bytes:
    count, pairs = _pairs(position_fields(symbol, marker, wall))
    key = KEYS.position(symbol).encode()
    return b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%b\r\n%b" % (2 + 2 * count, len(key), key, pairs)


async def background(
    wire: Wire, tracker: Tracker, busy: list[str], rate: float, seconds: float
) -> int:
    """Round-robin material changes of the busy symbols at `rate`/s; events sent."""
    started = time.perf_counter()
    sent, total, i = 0, int(rate * seconds), 0
    while sent < total:
        now = time.perf_counter()
        due = min(int((now - started) * rate), total) - sent
        if due > 0:
            wall = time.time()
            parts = []
            for _ in range(min(due, 5000)):
                symbol = busy[i % len(busy)]
                i += 1
                marker = tracker.next_marker(symbol)
                tracker.written[symbol] = marker
                parts.append(_hset(symbol, marker, wall))
            await wire.roundtrip(b"".join(parts), len(parts))
            sent += len(parts)
        await asyncio.sleep(max(0.0, 0.001 - (time.perf_counter() - now)))
    return sent


async def probes(wire: Wire, tracker: Tracker, quiet: list[str], seconds: float, start: int) -> int:
    """A material change of the next quiet symbol every 50 ms; probes sent."""
    n = int(seconds / PROBE_EVERY)
    t0 = time.perf_counter()
    for k in range(n):
        await asyncio.sleep(max(0.0, t0 + k * PROBE_EVERY - time.perf_counter()))
        symbol = quiet[(start + k) % len(quiet)]
        marker = tracker.next_marker(symbol)
        wall = time.time()
        tracker.sent[(symbol, marker)] = (time.perf_counter(), wall)
        tracker.written[symbol] = marker
        await wire.roundtrip(_hset(symbol, marker, wall), 1)
    return n


def _profile(pid: int, rate: float, seconds: float) -> subprocess.Popen[bytes] | None:
    """With E2E_PYSPY=<dir>: py-spy samples the service through the phase (collapsed
    stacks in <dir>/floor-<rate>.txt)."""
    out = os.environ.get("E2E_PYSPY")
    if not out:
        return None
    spy = Path(sys.executable).with_name("py-spy")
    target = Path(out) / f"floor-{rate:g}.txt"
    return subprocess.Popen(
        [spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "200", "-f", "raw",
         "-o", str(target), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def measure_production_floor(
    url: str, server_pid: int, log_dir: Path, rates: list[float], seconds: float
) -> list[dict[str, Any]]:
    client = aioredis.Redis.from_url(url)
    load = Wire(endpoint_from_url(url), name="bench-load", timeout=10.0)
    probe = Wire(endpoint_from_url(url), name="bench-probe", timeout=10.0)
    busy = symbols_for(1000)
    # each quiet symbol is probed once per len(quiet) * 50 ms = 20 s > the floor
    quiet = [f"QUIET{i:04d}USDT" for i in range(400)]
    tracker = Tracker(busy + quiet)
    await client.flushall()
    await e2e.preload(client, tracker)
    service = ServiceProcess(url, log_dir, PUBLISH_INTERVAL_SEC=str(FLOOR))
    pid = service.start().pid
    stop = asyncio.Event()
    reader = asyncio.create_task(e2e.reader_task(url, tracker, stop))
    out: list[dict[str, Any]] = []
    used = 0
    try:

        async def started() -> bool:
            return bool(await client.exists(KEYS.liveness("bench")))

        await wait_until(started, "the service to start", 60)
        if await e2e.converged(tracker, 30) is None:
            raise RuntimeError("the service did not publish the preloaded symbols")
        await asyncio.sleep(FLOOR + 0.5)  # every quiet symbol's startup publish is > floor old
        for rate in rates:
            tracker.reset_samples()
            spy = _profile(pid, rate, seconds)
            cpu0, redis0, t0 = cpu_seconds(pid), cpu_seconds(server_pid), time.perf_counter()
            sent, n_probes = await asyncio.gather(
                background(load, tracker, busy, rate, seconds),
                probes(probe, tracker, quiet, seconds, used),
            )
            used += n_probes
            elapsed = time.perf_counter() - t0
            if spy is not None:
                spy.wait()
            cpu = cpu_seconds(pid) - cpu0
            redis_share = (cpu_seconds(server_pid) - redis0) / elapsed
            conv = await e2e.converged(tracker, FLOOR + 1.0)
            row = {
                "rate": rate,
                "achieved": sent / elapsed,
                "probes": len(tracker.observed),
                "p50": pct(tracker.observed, 0.5),
                "p99": pct(tracker.observed, 0.99),
                "cpu_share": cpu / elapsed,
                "us_per_event": cpu / (sent + n_probes) * 1e6,
                "converge": conv,
                "redis_share": redis_share,
            }
            out.append(row)
            conv_text = f"in {conv:.2f} s" if conv is not None else "NO (within floor + 1 s)"
            print(
                f"  floor {FLOOR:g} s, {rate:>7,.0f}/s (achieved {row['achieved']:,.0f}): probe "
                f"p50 {ms(row['p50'])}, p99 {ms(row['p99'])} ({row['probes']} probes); service "
                f"CPU {row['cpu_share']:.0%} = {row['us_per_event']:.1f} us/event, server "
                f"{redis_share:.0%}; converged "
                f"{conv_text}",
                flush=True,
            )
            if conv is None:
                await e2e.converged(tracker, 30)
            await asyncio.sleep(FLOOR + 0.5)  # quiet symbols used next are past the floor
    finally:
        stop.set()
        await reader
        service.stop()
        load.close()
        probe.close()
        await client.aclose()
    return out


async def measure_startup(url: str, log_dir: Path, n_symbols: int) -> dict[str, float]:
    client = aioredis.Redis.from_url(url)

    async def ready_after() -> float:
        service = ServiceProcess(url, log_dir, ENABLE_STREAM="false")
        t0 = time.perf_counter()
        service.start()
        try:

            async def started() -> bool:
                return bool(await client.exists(KEYS.liveness("bench")))

            await wait_until(started, "the service to be ready", 120)
            return time.perf_counter() - t0
        finally:
            service.stop()

    try:
        await client.flushall()
        empty = await ready_after()
        sim = Simulator(symbols_for(n_symbols), seed=1, start=time.time(), open_fraction=1.0)
        kinds = {"marketstate": KEYS.marketstate, "risk": KEYS.risk, "position": KEYS.position}
        writes = sim.initial()
        for start in range(0, len(writes), 3000):
            async with client.pipeline(transaction=False) as pipe:
                for w in writes[start : start + 3000]:
                    pipe.hset(kinds[w.kind](w.symbol), mapping=w.fields)
                await pipe.execute()
        await client.delete(KEYS.liveness("bench"))
        cold = await ready_after()  # computes and publishes every symbol
        await client.delete(KEYS.liveness("bench"))
        warm = await ready_after()  # the proposals are in place: adopted
        return {"empty": empty, "publish": cold, "adopt": warm}
    finally:
        await client.aclose()


async def main_async(args: argparse.Namespace) -> None:
    binary = pick_binary(args.flavour)
    rates = [float(s) for s in args.rates.split(",") if s]
    with (
        tempfile.TemporaryDirectory(prefix="harvest-bench-") as tmp,
        EmbeddedRedis(binary) as server,
    ):
        log_dir = Path(tmp)
        print(
            f"harvest-async {__version__} e2e (both regimes); Python "
            f"{platform.python_version()}, {binary.id}, {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        if not args.skip_floor0:
            steps = [float(s) for s in args.floor0_steps.split(",") if s]
            raw = await e2e.measure_floor(server.url, 1000)
            print(
                f"raw floor (HSET -> keyspace notification): p50 {ms(pct(raw, 0.5))}, "
                f"p99 {ms(pct(raw, 0.99))}",
                flush=True,
            )
            print("floor 0: 1,000 symbols at 1,000 ev/s, then steps:", flush=True)
            svc = await e2e.measure_service(
                server.url, server.pid, log_dir, 1000, 1000.0, args.seconds, steps,
                args.seconds,
            )  # fmt: skip
            base = svc["base"]
            passing = [s.rate for s in svc["steps"] if s.ok]
            print(f"  base {base.line()}", flush=True)
            print(f"  floor 0 sustained: {max(passing, default=0.0):,.0f} ev/s", flush=True)
        print(f"production floor ({FLOOR:g} s), probe every 50 ms:", flush=True)
        await measure_production_floor(server.url, server.pid, log_dir, rates, args.seconds)
        st = await measure_startup(server.url, log_dir, args.mem_symbols)
        print(
            f"startup, {args.mem_symbols:,} symbols: ready in {st['publish']:.2f} s publishing, "
            f"{st['adopt']:.2f} s adopting; empty server {st['empty']:.2f} s (imports); "
            f"startup pass {st['publish'] - st['empty']:.2f} s / {st['adopt'] - st['empty']:.2f} s",
            flush=True,
        )
        mem = await e2e.measure_memory(server.url, log_dir, args.mem_symbols)
        print(
            f"memory: {mem['per_symbol_bytes'] / 1024:.2f} KiB per tracked symbol at "
            f"{mem['symbols']:,} symbols",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shorter phases (a smoke run)")
    p.add_argument("--flavour", default="redis", choices=("redis", "valkey"))
    p.add_argument("--rates", default="2000,5000,10000,20000")
    p.add_argument("--floor0-steps", default="5000,10000")
    p.add_argument("--skip-floor0", action="store_true")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--mem-symbols", type=int, default=10_000)
    args = p.parse_args()
    if args.quick:
        args.seconds, args.rates, args.floor0_steps = 2.0, "2000,10000", "5000"
    try:
        import uvloop

        uvloop.run(main_async(args))
    except ImportError:  # pragma: no cover - non-Linux
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
