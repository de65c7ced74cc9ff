"""End-to-end benchmark: Redis input HSET -> the service -> proposal written.

Run: `make bench` or `.venv/bin/python bench/e2e.py [--quick]`. Prints numbers, asserts
nothing. One run measures, against a private server (EmbeddedRedis, unix socket):

1. floor: HSET on one connection -> its keyspace notification on another (p50/p99);
2. latency: the service (`python -m harvest_async run`, uvloop, its own process) with
   PUBLISH_INTERVAL_SEC=0 over 1,000 symbols at 1,000 input events/s: input HSET sent ->
   the proposal's audit entry seen (XREAD BLOCK on the audit stream, which is written by
   the same write script call as the hash, just before it). Each event rewrites one
   position hash with a unique
   `unrealized_pnl` (a material change), which the proposal echoes in
   `position_unrealized_pnl`: that pairs every publish with the HSET that caused it.
   Also "stamped": the proposal's own `ts_epoch` (compute time) minus the HSET time,
   which leaves out the benchmark's reading delay;
3. sustained rate: steps of 2k, 3k, 4k, 5k, 10k, 15k, 20k events/s, 4 s each; a step
   passes when p99 < 100 ms and, once writing stops, every symbol's proposal shows its
   last input within 3 s;
4. CPU seconds (/proc/<pid>/stat) and peak RSS (VmHWM) of the service;
5. memory per tracked symbol: a fresh service, RSS with no symbols, then with 10,000
   (simulator snapshot, every position open), (after - before) / 10,000.

The service runs with SYMBOLS=*, PUBLISH_INTERVAL_SEC=0, the audit stream on and
LOG_LEVEL=WARNING (at INFO it logs one line per publish). The benchmark process, the
server and the service share the machine's CPUs; each phase prints the share each one
used, and the numbers include that contention (the CPU count is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from harness import ServiceProcess, cpu_seconds, ms, pct, pick_binary, status_kib

from harvest_async import __version__
from harvest_async.core.keys import Keys
from harvest_async.core.proposal import PROPOSAL_FIELDS
from harvest_async.redis_io.wire import Wire, endpoint_from_url
from harvest_async.tools.embedded_server import EmbeddedRedis
from harvest_async.tools.simulate import Simulator, symbols_for

KEYS = Keys()


# -- helpers ------------------------------------------------------------------------------


def market_fields(now: float) -> dict[str, str]:
    return {
        "sigma": "0.005",
        "ts": "0.5",
        "p_trend": "0.6",
        "p_mr": "0.2",
        "p_chop": "0.2",
        "ts_timestamp": str(int(now)),
    }


def position_fields(symbol: str, pnl: str, now: float) -> dict[str, str]:
    return {
        "symbol": symbol,
        "side": "LONG",
        "quantity": "1.0",
        "entry_price": "100.0",
        "current_price": "100.5",
        "unrealized_pnl": pnl,
        "created_at": str(int(now) - 600),
        "ts_epoch": repr(round(now, 3)),
    }


async def wait_until(probe: Any, what: str, limit: float) -> float:
    started = time.perf_counter()
    while not await probe():
        if time.perf_counter() - started > limit:
            raise TimeoutError(f"timed out after {limit} s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.perf_counter() - started


# -- 1. the floor -------------------------------------------------------------------------


async def measure_floor(url: str, samples: int) -> list[float]:
    sub = aioredis.Redis.from_url(url)
    writer = aioredis.Redis.from_url(url)
    pubsub = sub.pubsub()
    try:
        await pubsub.psubscribe("__keyspace@0__:floor:*")
        while (await pubsub.get_message(timeout=None))["type"] != "psubscribe":
            pass
        out = []
        for i in range(samples + 100):
            sent = time.perf_counter()
            pending = asyncio.ensure_future(writer.hset("floor:k", "v", i))
            while True:
                msg = await pubsub.get_message(timeout=None)
                if msg is not None and msg["type"] == "pmessage":
                    break
            got = time.perf_counter()
            await pending
            if i >= 100:  # warm-up
                out.append(got - sent)
        return out
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await sub.aclose()
        await writer.aclose()


# -- 2./3. latency and sustained rate -----------------------------------------------------


@dataclass
class Tracker:
    """Pairs audit entries with the HSETs that caused them."""

    symbols: list[str]
    sent: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    written: dict[str, str] = field(default_factory=dict)  # symbol -> last marker written
    published: dict[str, str] = field(default_factory=dict)  # symbol -> last marker seen
    observed: list[float] = field(default_factory=list)
    stamped: list[float] = field(default_factory=list)
    counter: dict[str, int] = field(default_factory=dict)
    entries: int = 0

    def next_marker(self, symbol: str) -> str:
        k = self.counter.get(symbol, 0) + 1
        self.counter[symbol] = k
        # R = (pnl - 0.1) / 2: every marker differs from every earlier one by >= 0.1 R
        # (material, R_EPS = 0.05), so whatever the service last saw, the final input
        # must be published
        return repr(round(k * 0.2, 6))

    def reset_samples(self) -> None:
        self.observed = []
        self.stamped = []
        self.sent.clear()


# where the audit entry carries what the reader needs: `event`, then the proposal fields
# in PROPOSAL_FIELDS order (values at odd positions)
_AT = {name: 2 * (1 + PROPOSAL_FIELDS.index(name)) + 1 for name in PROPOSAL_FIELDS}
_SYMBOL, _PNL, _TS = _AT["symbol"], _AT["position_unrealized_pnl"], _AT["ts_epoch"]


def _pairs(fields: dict[str, str]) -> tuple[int, bytes]:
    """(number of fields, their RESP bulk strings): ASCII text encoded once, the load
    generator's cheapest way (its CPU is taken from the service it measures)."""
    text = "".join(f"${len(k)}\r\n{k}\r\n${len(v)}\r\n{v}\r\n" for k, v in fields.items())
    return len(fields), text.encode()


async def reader_task(url: str, tracker: Tracker, stop: asyncio.Event) -> None:
    client = aioredis.Redis.from_url(url, socket_timeout=None)
    client.response_callbacks["XREAD"] = lambda r, **_kw: r  # raw lists: cheaper to walk
    # from the start (the callers flush the server first): "$" again after an empty
    # XREAD would miss what was appended between two calls (the startup's publishes)
    last = b"0-0"
    try:
        while not stop.is_set():
            reply = await client.execute_command(
                "XREAD", "COUNT", "20000", "BLOCK", "200", "STREAMS", KEYS.stream, last
            )
            if not reply:
                continue
            got = time.perf_counter()
            # RESP2: [[stream, entries]]; RESP3: {stream: entries}
            entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))
            sent = tracker.sent
            for entry_id, flat in entries:
                last = entry_id
                tracker.entries += 1
                if flat[1] != b"publish":
                    continue
                if flat[_SYMBOL - 1] != b"symbol":  # not the expected layout: look it up
                    it = iter(flat)
                    fields = dict(zip(it, it, strict=True))
                    row = (fields[b"symbol"], fields[b"position_unrealized_pnl"])
                    stamp = fields[b"ts_epoch"]
                else:
                    row = (flat[_SYMBOL], flat[_PNL])
                    stamp = flat[_TS]
                symbol, marker = row[0].decode(), row[1].decode()
                tracker.published[symbol] = marker
                when = sent.pop((symbol, marker), None)
                if when is not None:
                    tracker.observed.append(got - when[0])
                    tracker.stamped.append(float(stamp) - when[1])
    finally:
        await client.aclose()


async def drive(
    wire: Wire, tracker: Tracker, rate: float, seconds: float, rng: random.Random
) -> float:
    """Rewrite random symbols' position hashes at `rate`/s; returns the achieved rate.

    The HSETs go out as prebuilt RESP on a connection of their own (as the service's
    writes do), so that the load generator takes as little CPU as it can from the
    service and the server it measures.
    """
    tick = 0.001
    n = len(tracker.symbols)
    started = time.perf_counter()
    sent = 0
    total = int(rate * seconds)
    while sent < total:
        now = time.perf_counter()
        due = min(int((now - started) * rate), total) - sent
        if due > 0:
            wall = time.time()
            parts = []
            batch = []
            for _ in range(min(due, 5000)):
                symbol = tracker.symbols[rng.randrange(n)]
                marker = tracker.next_marker(symbol)
                batch.append((symbol, marker))
                count, pairs = _pairs(position_fields(symbol, marker, wall))
                key = KEYS.position(symbol).encode()
                parts.append(b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%b\r\n%b" % (
                    2 + 2 * count, len(key), key, pairs
                ))  # fmt: skip
            t_sent = time.perf_counter()
            for symbol, marker in batch:
                tracker.sent[(symbol, marker)] = (t_sent, wall)
                tracker.written[symbol] = marker
            await wire.roundtrip(b"".join(parts), len(batch))
            sent += len(batch)
        await asyncio.sleep(max(0.0, tick - (time.perf_counter() - now)))
    return sent / (time.perf_counter() - started)


async def converged(tracker: Tracker, limit: float) -> float | None:
    async def probe() -> bool:
        return all(tracker.published.get(s) == m for s, m in tracker.written.items())

    try:
        return await wait_until(probe, "convergence", limit)
    except TimeoutError:
        if os.environ.get("E2E_DEBUG"):
            bad = [
                (s, m, tracker.published.get(s))
                for s, m in tracker.written.items()
                if tracker.published.get(s) != m
            ]
            print(f"    not converged: {len(bad)} symbols, e.g. {bad[:3]}", flush=True)
        return None


async def preload(client: aioredis.Redis, tracker: Tracker) -> None:
    now = time.time()
    async with client.pipeline(transaction=False) as pipe:
        for symbol in tracker.symbols:
            marker = tracker.next_marker(symbol)
            tracker.written[symbol] = marker
            pipe.hset(KEYS.marketstate(symbol), mapping=market_fields(now))
            pipe.hset(KEYS.risk(symbol), mapping={"stop_dist_pct": "0.02"})
            pipe.hset(KEYS.position(symbol), mapping=position_fields(symbol, marker, now))
        await pipe.execute()


@dataclass
class Step:
    rate: float
    achieved: float
    samples: int
    p50: float
    p99: float
    worst: float
    stamped_p50: float
    stamped_p99: float
    converge: float | None
    seconds: float  # wall time of the phase (writing and converging)
    cpu: float  # the service's CPU seconds in the phase
    redis_cpu: float
    bench_cpu: float

    @property
    def ok(self) -> bool:
        return self.p99 < 0.1 and self.converge is not None

    def line(self) -> str:
        conv = f"in {self.converge:.2f} s" if self.converge is not None else "NO"
        return (
            f"{self.rate:>7,.0f}/s (achieved {self.achieved:,.0f}/s, {self.samples} samples): "
            f"p50 {ms(self.p50)}, p99 {ms(self.p99)}, max {ms(self.worst)}; stamped p50 "
            f"{ms(self.stamped_p50)}, p99 {ms(self.stamped_p99)}; converged {conv}; CPU of "
            f"service {self.cpu / self.seconds:.0%}, server {self.redis_cpu / self.seconds:.0%}, "
            f"benchmark {self.bench_cpu / self.seconds:.0%}"
        )


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def phase(  # noqa: PLR0917 - a benchmark helper
    wire: Wire,
    tracker: Tracker,
    rng: random.Random,
    pids: tuple[int, int],
    rate: float,
    seconds: float,
    converge_limit: float,
) -> Step:
    tracker.reset_samples()
    service_pid, server_pid = pids
    cpu0, redis0, bench0, t0 = (
        cpu_seconds(service_pid), cpu_seconds(server_pid), own_cpu(), time.perf_counter()
    )  # fmt: skip
    achieved = await drive(wire, tracker, rate, seconds, rng)
    conv = await converged(tracker, converge_limit)
    return Step(
        rate,
        achieved,
        len(tracker.observed),
        pct(tracker.observed, 0.5),
        pct(tracker.observed, 0.99),
        max(tracker.observed, default=float("nan")),
        pct(tracker.stamped, 0.5),
        pct(tracker.stamped, 0.99),
        conv,
        time.perf_counter() - t0,
        cpu_seconds(service_pid) - cpu0,
        cpu_seconds(server_pid) - redis0,
        own_cpu() - bench0,
    )


async def measure_service(  # noqa: PLR0917 - a benchmark's knobs
    url: str, server_pid: int, log_dir: Path, n_symbols: int, rate: float, seconds: float,
    steps: list[float], step_seconds: float,
) -> dict[str, Any]:  # fmt: skip
    client = aioredis.Redis.from_url(url)
    wire = Wire(endpoint_from_url(url), name="bench-load", timeout=10.0)
    tracker = Tracker(symbols_for(n_symbols))
    rng = random.Random(1)
    await client.flushall()
    await preload(client, tracker)
    service = ServiceProcess(url, log_dir)
    pid = service.start().pid
    pids = (pid, server_pid)
    stop = asyncio.Event()
    reader = asyncio.create_task(reader_task(url, tracker, stop))
    results: dict[str, Any] = {}
    try:

        async def started() -> bool:
            return bool(await client.exists(KEYS.liveness("bench")))

        results["startup"] = await wait_until(started, "the service to start", 30)
        if await converged(tracker, 30) is None:
            raise RuntimeError("the service did not publish the preloaded symbols")
        await asyncio.sleep(0.5)
        results["base"] = await phase(wire, tracker, rng, pids, rate, seconds, 5)
        print(f"  {results['base'].line()}", flush=True)
        results["steps"] = []
        for step_rate in steps:
            await asyncio.sleep(0.3)
            step = await phase(wire, tracker, rng, pids, step_rate, step_seconds, 3)
            results["steps"].append(step)
            print(f"  step {step.line()}", flush=True)
            if step.converge is None:
                await converged(tracker, 15)  # let it catch up before the next step
        results["cpu_total"] = cpu_seconds(pid)
        results["peak_rss_kib"] = status_kib(pid, "VmHWM")
        results["events"] = sum(tracker.counter.values())
    finally:
        stop.set()
        await reader
        code = service.stop()
        wire.close()
        await client.aclose()
    results["exit"] = code
    return results


# -- 5. memory per symbol -----------------------------------------------------------------


async def measure_memory(url: str, log_dir: Path, n_symbols: int) -> dict[str, float]:
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    service = ServiceProcess(url, log_dir, ENABLE_STREAM="false")
    pid = service.start().pid
    try:

        async def started() -> bool:
            return bool(await client.exists(KEYS.liveness("bench")))

        await wait_until(started, "the service to start", 30)
        await asyncio.sleep(1.0)
        before = status_kib(pid, "VmRSS")
        sim = Simulator(symbols_for(n_symbols), seed=1, start=time.time(), open_fraction=1.0)
        writes = sim.initial()
        for start in range(0, len(writes), 3000):
            async with client.pipeline(transaction=False) as pipe:
                for w in writes[start : start + 3000]:
                    key = {"marketstate": KEYS.marketstate, "risk": KEYS.risk}.get(
                        w.kind, KEYS.position
                    )(w.symbol)
                    pipe.hset(key, mapping=w.fields)
                await pipe.execute()
        opened = {w.symbol for w in writes if w.kind == "position" and w.fields["side"] != "FLAT"}

        async def all_published() -> bool:
            async with client.pipeline(transaction=False) as pipe:
                for symbol in opened:
                    pipe.exists(KEYS.proposal(symbol))
                found = await pipe.execute()
            return sum(found) >= len(opened) * 0.95  # a few are stale by design

        took = await wait_until(all_published, f"{len(opened)} proposals", 60)
        await asyncio.sleep(1.5)
        after = status_kib(pid, "VmRSS")
        return {
            "symbols": n_symbols,
            "before_kib": before,
            "after_kib": after,
            "per_symbol_bytes": (after - before) * 1024 / n_symbols,
            "publish_all_s": took,
            "peak_rss_kib": status_kib(pid, "VmHWM"),
        }
    finally:
        service.stop()
        await client.aclose()


# -- main ---------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> None:
    binary = pick_binary(args.flavour)
    steps = [float(s) for s in args.steps.split(",") if s]
    with (
        tempfile.TemporaryDirectory(prefix="harvest-bench-") as tmp,
        EmbeddedRedis(binary) as server,
    ):
        log_dir = Path(tmp)
        print(
            f"harvest-async {__version__} e2e benchmark; Python {platform.python_version()}, "
            f"{binary.id}, {os.cpu_count()} CPUs, {platform.platform()}",
            flush=True,
        )
        t0 = time.perf_counter()
        if args.memory_only:
            mem = await measure_memory(server.url, log_dir, args.mem_symbols)
            print(f"memory: {mem['per_symbol_bytes'] / 1024:.2f} KiB/symbol ({mem})")
            return
        floor = await measure_floor(server.url, args.floor_samples)
        print(
            f"floor (HSET -> keyspace notification, {len(floor)} samples): "
            f"p50 {ms(pct(floor, 0.5))}, p99 {ms(pct(floor, 0.99))}",
            flush=True,
        )
        print(
            f"service: {args.symbols} symbols at {args.rate:g} events/s for {args.seconds:g} s, "
            "then steps:",
            flush=True,
        )
        svc = await measure_service(
            server.url, server.pid, log_dir, args.symbols, args.rate, args.seconds, steps,
            args.step_seconds,
        )  # fmt: skip
        base: Step = svc["base"]
        passing = [s.rate for s in svc["steps"] if s.ok]
        sustained = max(passing, default=0.0)
        print(f"sustained: {sustained:,.0f} events/s (highest step with p99 < 100 ms, converged)")
        print(
            f"service process: {svc['cpu_total']:.2f} CPU s over {svc['events']:,} input "
            f"events, peak RSS {svc['peak_rss_kib'] / 1024:.1f} MiB, exit {svc['exit']}",
            flush=True,
        )
        mem = await measure_memory(server.url, log_dir, args.mem_symbols)
        print(
            f"memory: RSS {mem['before_kib'] / 1024:.1f} MiB idle -> "
            f"{mem['after_kib'] / 1024:.1f} MiB with {mem['symbols']:,} symbols = "
            f"{mem['per_symbol_bytes']:,.0f} B/symbol ({mem['per_symbol_bytes'] / 1024:.2f} KiB); "
            f"all published in {mem['publish_all_s']:.2f} s",
            flush=True,
        )
        print(f"total {time.perf_counter() - t0:.0f} s")
        print()
        print("| measurement | result | target |")
        print("|---|---|---|")
        print(
            f"| floor: HSET -> notification | p50 {ms(pct(floor, 0.5))}, "
            f"p99 {ms(pct(floor, 0.99))} | (reference 0.12-0.19 ms) |"
        )
        print(
            f"| HSET -> proposal written, {args.rate:g} ev/s, {args.symbols} symbols | "
            f"p50 {ms(base.p50)}, p99 {ms(base.p99)}, max {ms(base.worst)} | "
            "p50 <= 1 ms, p99 <= 5 ms |"
        )
        print(
            f"| same, service-stamped (HSET -> compute) | p50 {ms(base.stamped_p50)}, "
            f"p99 {ms(base.stamped_p99)}; CPU: service {base.cpu / base.seconds:.0%}, "
            f"server {base.redis_cpu / base.seconds:.0%} | |"
        )
        for s in svc["steps"]:
            conv = f"{s.converge:.2f} s" if s.converge is not None else "no"
            print(
                f"| step {s.rate:,.0f} ev/s (achieved {s.achieved:,.0f}) | p50 {ms(s.p50)}, "
                f"p99 {ms(s.p99)}, max {ms(s.worst)}, converged {conv}; CPU: service "
                f"{s.cpu / s.seconds:.0%}, server {s.redis_cpu / s.seconds:.0%}, benchmark "
                f"{s.bench_cpu / s.seconds:.0%} | p99 < 100 ms |"
            )
        print(f"| sustained input rate | {sustained:,.0f} ev/s | >= 10,000 ev/s |")
        print(
            f"| service CPU / peak RSS | {svc['cpu_total']:.2f} s for {svc['events']:,} "
            f"events, {svc['peak_rss_kib'] / 1024:.1f} MiB | |"
        )
        print(
            f"| memory per tracked symbol at {mem['symbols']:,} | "
            f"{mem['per_symbol_bytes'] / 1024:.2f} KiB | <= 4 KiB |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shorter phases (a smoke run)")
    p.add_argument("--flavour", default="redis", choices=("redis", "valkey"))
    p.add_argument("--symbols", type=int, default=1000)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--steps", default="2000,3000,4000,5000,10000,15000,20000")
    p.add_argument("--step-seconds", type=float, default=4.0)
    p.add_argument("--floor-samples", type=int, default=2000)
    p.add_argument("--mem-symbols", type=int, default=10_000)
    p.add_argument("--memory-only", action="store_true", help="only the memory measurement")
    args = p.parse_args()
    if args.quick:
        args.seconds, args.step_seconds, args.floor_samples = 2.0, 1.5, 500
    try:
        import uvloop

        uvloop.run(main_async(args))
    except ImportError:  # pragma: no cover - non-Linux
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
