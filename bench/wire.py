"""Wire benchmark: the owned connection (harvest_async.redis_io.wire) against the current `_Wire`.

Run: `.venv/bin/python bench/wire.py [--tcp] [--loop asyncio|uvloop] [--rounds N]`.
Prints numbers, asserts nothing, writes nothing to BENCHMARKS.md. Against a private
server (EmbeddedRedis, unix socket unless --tcp), per round trip, median of N:

1. fetch: 750 HGETALLs pipelined (250 symbols x market state, risk, position);
2. write: one MULTI with 250 x (DEL, HSET of 34 fields, XADD of 36 fields), EXEC;
3. ping: one PING (the fixed cost of a round trip);
and notifications: 100,000 keyspace notifications made by one server-side script,
µs per message from the script's start until the subscriber has them all: the new
`Subscriber.read_batch` against the current loop (a redis-py connection in RESP2,
`read_response` per message, as `sources.KeyspaceSource._consume` does).

"wall" includes the server's work and waiting for it; "cpu" is this process's CPU time
(user + system), the part the wire decides. The "streams" line is the same round trip
over asyncio streams (StreamReader.read + hiredis, without deadline or error handling: a
lower bound for that design), the alternative to the Protocol. "deadline timer" is what a
loop.call_later + cancel per round trip would cost; the wire re-arms one timer lazily.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis
import redis.asyncio as aioredis

from harvest_async.core.keys import Keys
from harvest_async.core.proposal import PROPOSAL_FIELDS
from harvest_async.redis_io.client import client_for
from harvest_async.redis_io.publisher import _Wire
from harvest_async.redis_io.wire import Subscriber, Wire, command, endpoint_from_url
from harvest_async.tools.embedded_server import EmbeddedRedis

KEYS = Keys()
SYMBOLS = [f"SYM{i:03d}USDT" for i in range(250)]
NOTIFICATIONS = 100_000


def market() -> dict[str, str]:
    names = ("sigma", "ts", "p_trend", "p_mr", "p_chop", "mu", "dp", "vr", "spike_proxy")
    return {**dict.fromkeys(names, "0.123456"), "ts_timestamp": "1760000000"}


def position(sym: str) -> dict[str, str]:
    return {
        "symbol": sym,
        "side": "LONG",
        "quantity": "1.5",
        "entry_price": "100.25",
        "current_price": "101.75",
        "unrealized_pnl": "2.25",
        "created_at": "1760000000",
        "ts_epoch": "1760000123.456",
        "stop_loss": "98.5",
        "take_profit": "110.0",
    }


def fetch_payload() -> bytes:
    return b"".join(
        command("HGETALL", key)
        for sym in SYMBOLS
        for key in (KEYS.marketstate(sym), KEYS.risk(sym), KEYS.position(sym))
    )


def write_payload() -> tuple[bytes, int]:
    parts = [command("MULTI")]
    for sym in SYMBOLS:
        key = KEYS.proposal(sym)
        fields = [x for name in PROPOSAL_FIELDS for x in (name, f"{len(name)}.12345678")]
        parts.append(command("DEL", key))
        parts.append(command("HSET", key, *fields))
        xadd = ("XADD", KEYS.stream, "MAXLEN", "~", "100000", "*", "event", "publish")
        parts.append(command(*xadd, *fields))
    parts.append(command("EXEC"))
    return b"".join(parts), 2 + 3 * len(SYMBOLS)


async def timed(rounds: int, calls: dict[str, Callable[[], Awaitable[Any]]]) -> dict[str, str]:
    """Per implementation: median wall µs and median CPU µs (this process) per call.

    The implementations take turns, round after round, so a machine whose load changes
    during the run (other processes on 2 vCPUs) biases none of them.
    """
    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    for turn in range(rounds + 5):
        for name, call in calls.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            await call()
            if turn >= 5:  # warm-up first
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    median = statistics.median
    return {
        name: f"{median(wall[name]) * 1e6:8.1f} wall {median(cpu[name]) * 1e6:8.1f} cpu"
        for name in calls
    }


class StreamsWire:
    """The same round trip over asyncio streams: the alternative to the Protocol."""

    def __init__(self, url: str) -> None:
        self.path = url.removeprefix("unix://")
        self.url = url
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.parser = hiredis.Reader(encoding="utf-8", errors="replace")

    async def roundtrip(self, payload: bytes, count: int) -> list[Any]:
        if self.reader is None or self.writer is None:
            if self.url.startswith("unix://"):
                self.reader, self.writer = await asyncio.open_unix_connection(self.path)
            else:
                host, port = self.url.removeprefix("redis://").split("/")[0].split(":")
                self.reader, self.writer = await asyncio.open_connection(host, int(port))
        self.writer.write(payload)
        out: list[Any] = []
        gets = self.parser.gets
        while len(out) < count:
            reply = gets()
            if reply is False:
                self.parser.feed(await self.reader.read(65536))
                continue
            out.append(reply)
        return out


async def roundtrips(url: str, rounds: int) -> None:
    admin = aioredis.from_url(url, decode_responses=True)
    async with admin.pipeline(transaction=False) as pipe:
        for sym in SYMBOLS:
            pipe.hset(KEYS.marketstate(sym), mapping=market())
            pipe.hset(KEYS.risk(sym), mapping={"stop_dist_pct": "0.02", "proposed_sl": "98"})
            pipe.hset(KEYS.position(sym), mapping=position(sym))
        await pipe.execute()
    old_client = client_for(url, name="bench-old")
    old = _Wire(old_client, 5.0)
    new = Wire(endpoint_from_url(url), name="bench-new", timeout=5.0)
    streams = StreamsWire(url)
    fetch = fetch_payload()
    write, write_replies = write_payload()
    ping = command("PING")
    cases: list[tuple[str, bytes, int]] = [
        ("fetch 750 HGETALL", fetch, 750),
        (f"write MULTI 250 x 3 ({len(write) // 1024} KiB)", write, write_replies),
        ("ping", ping, 1),
    ]
    for name, payload, count in cases:
        results = await timed(
            rounds,
            {
                "old _Wire": lambda p=payload, n=count: old.roundtrip(p, n),
                "new Wire": lambda p=payload, n=count: new.roundtrip(p, n),
                "streams": lambda p=payload, n=count: streams.roundtrip(p, n),
            },
        )
        print(f"{name}, µs per round trip (median of {rounds})")
        for impl, shown in results.items():
            print(f"    {impl:<10} {shown}")
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    for _ in range(100_000):
        loop.call_later(5.0, print).cancel()
    print(f"deadline timer (call_later + cancel): {(time.perf_counter() - start) * 10:.2f} µs")
    new.close()
    await old_client.aclose()
    await admin.aclose()


def parse_slices() -> None:
    """hiredis on one 256 KiB read of notifications, fed whole or in 16 KiB slices."""
    parts = [b"pmessage", PATTERN.encode(), b"__keyspace@0__:quantum:marketstate:SYM1USDT"]
    message = command(*parts, "hset")  # a RESP array of bulk strings, as the server sends
    data = message * (262144 // len(message))
    more = object()
    for label, size in (("whole", len(data)), ("16 KiB slices", 16384)):
        best = float("inf")
        for _ in range(20):
            reader = hiredis.Reader(encoding="utf-8", errors="replace", notEnoughData=more)
            start = time.process_time()
            for offset in range(0, len(data), size):
                reader.feed(data, offset, min(size, len(data) - offset))
                while reader.gets() is not more:
                    pass
            best = min(best, time.process_time() - start)
        print(f"    {label:<14} {best * 1e6:7.0f} µs")


NOTIFY_SCRIPT = "for i = 1, tonumber(ARGV[1]) do redis.call('HSET', 'quantum:marketstate:S' .. (i % 1000), 'f', i) end"  # noqa: E501
PATTERN = "__keyspace@0__:quantum:marketstate:*"


async def drive_notifications(url: str, received: Callable[[], int]) -> tuple[float, float]:
    """(wall, CPU of this process) µs per notification, from the script's start until
    all have been received."""
    producer = aioredis.from_url(url, decode_responses=True)
    start, start_cpu = time.perf_counter(), time.process_time()
    await producer.eval(NOTIFY_SCRIPT, 0, NOTIFICATIONS)
    while received() < NOTIFICATIONS:  # noqa: ASYNC110 - a poll keeps the consumers bare
        await asyncio.sleep(0.001)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    await producer.aclose()
    return elapsed / NOTIFICATIONS * 1e6, cpu / NOTIFICATIONS * 1e6


async def notifications_new(url: str) -> tuple[float, float]:
    subscriber = await Subscriber.open(endpoint_from_url(url), [PATTERN], name="bench-new")
    count = 0

    async def consume() -> None:
        nonlocal count
        while True:
            for message in await subscriber.read_batch():
                if message[0] == "pmessage":
                    message[2]
                    count += 1

    task = asyncio.create_task(consume())
    result = await drive_notifications(url, lambda: count)
    task.cancel()
    subscriber.close()
    return result


async def notifications_old(url: str) -> tuple[float, float]:
    client = client_for(url, name="bench-old-notify")
    conn: Any = client.connection_pool.make_connection()  # as sources.KeyspaceSource
    conn.protocol = 2
    conn.socket_timeout = None
    await conn.connect()
    await conn.send_command("PSUBSCRIBE", PATTERN)
    await conn.read_response()
    count = 0

    async def consume() -> None:
        nonlocal count
        read = conn.read_response
        while True:
            message = await read()
            if message[0] == "pmessage":
                message[2]
                count += 1

    task = asyncio.create_task(consume())
    result = await drive_notifications(url, lambda: count)
    task.cancel()
    await conn.disconnect()
    await client.aclose()
    return result


async def main(args: argparse.Namespace) -> None:
    with EmbeddedRedis(port=0 if args.tcp else None) as server:
        server.command("CONFIG", "SET", "client-output-buffer-limit", "pubsub 0 0 0")
        url = server.url
        print(
            f"server {server.binary.id} at {url}; loop {args.loop}; Python {sys.version.split()[0]}"
        )
        await roundtrips(url, args.rounds)
        print("hiredis parse of a 256 KiB read (best of 20, CPU)")
        parse_slices()
        print(f"{NOTIFICATIONS:,} notifications, µs per message (best of 3, alternating)")
        runs: dict[str, list[tuple[float, float]]] = {"old read_response": [], "new read_batch": []}
        for _ in range(3):
            runs["old read_response"].append(await notifications_old(url))
            runs["new read_batch"].append(await notifications_new(url))
        for name, results in runs.items():
            wall, cpu = min(results)
            print(f"    {name:<18} {wall:6.2f} wall {cpu:6.2f} cpu")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tcp", action="store_true", help="TCP on 127.0.0.1, not a unix socket")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    parser.add_argument("--rounds", type=int, default=200)
    arguments = parser.parse_args()
    if arguments.loop == "uvloop":
        import uvloop

        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))
