"""Wire benchmark: the hot paths as the service runs them, and the ways to write a batch.

Run: `.venv/bin/python bench/wire.py [--tcp] [--loop asyncio|uvloop] [--rounds N]`.
Prints numbers, asserts nothing, writes nothing to BENCHMARKS.md. Against a private
server (EmbeddedRedis, unix socket unless --tcp), per round trip, median of N:

1. fetch: `RedisInputReader.fetch` of 250 symbols (750 calls of the input read script);
2. write 250 proposals (35 fields each), the same outputs every round:
   - "sink before": the sink's transaction before the write script, built per call as
     it built it (a copy): MULTI, DEL + HSET + XADD per output (the payload crosses
     twice: hash and audit entry), EXEC; "MULTI DEL+HSET+XADD": the same, prebuilt;
   - "sink now": `RedisSink.write`, built per call: MULTI, one EVALSHA of the write
     script per output, EXEC;
   - "EVALSHA per output": the same calls without MULTI/EXEC;
   - "one EVALSHA per batch": one call of a script that loops over every output;
   and the same for one output (the usual size of a write at moderate rates);
3. ping: one PING (the fixed cost of a round trip);
and notifications: 100,000 keyspace notifications made by one server-side script, µs
per message from the script's start until `Subscriber.read_batch` has them all.

"cpu" is this process's CPU time (user + system) per round trip, building the payload
included for the sink (the part the client decides); "server" is the server process's
CPU per round trip (from /proc, blocks of rounds); "wall" includes both and, on a loaded
VM, scheduling delays. Implementations take turns, so a load change biases none.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis

from harvest_async.core.engine import Engine, EngineConfig
from harvest_async.core.input_hashes import SymbolInputs
from harvest_async.core.keys import Keys
from harvest_async.core.ports import Output, PublishOut
from harvest_async.redis_io.reader import RedisInputReader
from harvest_async.redis_io.sink import WRITE_SCRIPT, WRITE_SHA, RedisSink
from harvest_async.redis_io.wire import Subscriber, Wire, command, endpoint_from_url
from harvest_async.tools.embedded_server import EmbeddedRedis

KEYS = Keys()
SYMBOLS = [f"SYM{i:03d}USDT" for i in range(250)]
NOTIFICATIONS = 100_000
BLOCK = 10  # rounds per implementation between two reads of the server's CPU time
CLK_TCK = os.sysconf("SC_CLK_TCK")
NOW = time.time()


def market() -> dict[str, str]:
    names = ("sigma", "ts", "p_trend", "p_mr", "p_chop", "mu", "dp", "vr", "spike_proxy")
    return {**dict.fromkeys(names, "0.123456"), "ts_timestamp": str(int(NOW))}


def position(sym: str) -> dict[str, str]:
    return {
        "symbol": sym,
        "side": "LONG",
        "quantity": "1.5",
        "entry_price": "100.25",
        "current_price": "101.75",
        "unrealized_pnl": "2.25",
        "created_at": str(int(NOW)),
        "ts_epoch": repr(NOW),
        "stop_loss": "98.5",
        "take_profit": "110.0",
    }


def outputs(symbols: list[str]) -> list[Output]:
    engine = Engine(EngineConfig(proposal_ttl_sec=180.0))
    out: list[Output] = []
    for sym in symbols:
        engine.observe(SymbolInputs(sym, market(), {"stop_dist_pct": "0.02"}, position(sym)))
        result = engine.evaluate(sym, NOW)
        assert result is not None
        out.append(result)
    return out


def before_payload(outs: list[Output]) -> tuple[bytes, int]:
    """MULTI, per output DEL, HSET and XADD, EXEC: the sink's transaction before."""
    parts = [command("MULTI")]
    for out in outs:
        assert isinstance(out, PublishOut)
        key = KEYS.proposal(out.symbol)
        flat = [x for pair in out.fields.items() for x in pair]
        parts.append(command("DEL", key))
        parts.append(command("HSET", key, *flat))
        xadd = ("XADD", KEYS.stream, "MAXLEN", "~", "100000", "*", "event", "publish")
        parts.append(command(*xadd, *flat))
    parts.append(command("EXEC"))
    return b"".join(parts), 2 + 3 * len(outs)


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _pairs(fields: dict[str, str]) -> tuple[int, bytes]:
    text = "".join(f"${len(k)}\r\n{k}\r\n${len(v)}\r\n{v}\r\n" for k, v in fields.items())
    return len(fields), text.encode()


class SinkBefore:
    """The sink's transaction before the write script, as it built it (a copy, for the
    comparison): MULTI, per output DEL, HSET and XADD of the same packed fields, EXEC."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        head = [b"XADD", KEYS.stream.encode(), b"MAXLEN", b"~", b"100000", b"*"]
        self.xadd_head = b"".join(_bulk(x) for x in head)

    async def write(self, outs: list[Output]) -> None:
        parts = [command("MULTI")]
        for out in outs:
            assert isinstance(out, PublishOut)
            key = _bulk(KEYS.proposal(out.symbol).encode())
            parts.append(b"*2\r\n$3\r\nDEL\r\n" + key)
            n, pairs = _pairs(out.fields)
            parts.append(b"*%d\r\n$4\r\nHSET\r\n%b%b" % (2 + 2 * n, key, pairs))
            event = _bulk(b"event") + _bulk(b"publish")
            parts.append(b"*%d\r\n%b%b%b" % (8 + 2 * n, self.xadd_head, event, pairs))
        parts.append(command("EXEC"))
        await self.wire.roundtrip(b"".join(parts), len(parts))


def calls(outs: list[Output]) -> list[bytes]:
    """One EVALSHA of the write script per output, as the sink packs it (version 1)."""
    out = []
    for o in outs:
        assert isinstance(o, PublishOut)
        flat = [x for pair in o.fields.items() for x in pair]
        keys = (KEYS.proposal(o.symbol), KEYS.stream)
        out.append(
            command("EVALSHA", WRITE_SHA, 2, *keys, "1", "publish", o.seq, 180000, 100000, *flat)
        )
    return out


# The alternative: one call for a whole batch. KEYS: the stream, then the hashes; ARGV:
# ttl, maxlen, then per output the number of its fields' words and the words.
BATCH_SCRIPT = """
local stream, ttl, maxlen = KEYS[1], ARGV[1], ARGV[2]
local at, out = 3, {}
for k = 2, #KEYS do
  local n = tonumber(ARGV[at])
  local first, last = at + 1, at + n
  local id = redis.pcall('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'event', 'publish',
    unpack(ARGV, first, last))
  if type(id) == 'table' then out[#out + 1] = id else
    redis.call('DEL', KEYS[k])
    redis.call('HSET', KEYS[k], unpack(ARGV, first, last))
    redis.call('PEXPIRE', KEYS[k], ttl)
    out[#out + 1] = id
  end
  at = last + 1
end
return out
"""
BATCH_SHA = hashlib.sha1(BATCH_SCRIPT.encode()).hexdigest()


def batch_payload(outs: list[Output]) -> bytes:
    keys = [KEYS.stream, *(KEYS.proposal(o.symbol) for o in outs)]
    argv: list[str | int] = ["180000", "100000"]
    for o in outs:
        assert isinstance(o, PublishOut)
        argv.append(2 * len(o.fields))
        argv += [x for pair in o.fields.items() for x in pair]
    return command("EVALSHA", BATCH_SHA, len(keys), *keys, *argv)


def server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def timed(
    rounds: int, server_pid: int, calls_: dict[str, Callable[[], Awaitable[object]]]
) -> dict[str, str]:
    """Per implementation: median wall and CPU µs per call, and the server's CPU µs per
    call over blocks of BLOCK rounds, implementations taking turns block by block."""
    wall: dict[str, list[float]] = {name: [] for name in calls_}
    cpu: dict[str, list[float]] = {name: [] for name in calls_}
    server: dict[str, float] = dict.fromkeys(calls_, 0.0)
    for call in calls_.values():  # warm-up
        for _ in range(3):
            await call()
    for _ in range(max(1, rounds // BLOCK)):
        for name, call in calls_.items():
            server_before = server_cpu(server_pid)
            for _ in range(BLOCK):
                start, start_cpu = time.perf_counter(), time.process_time()
                await call()
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
            server[name] += server_cpu(server_pid) - server_before
    median = statistics.median
    return {
        name: f"{median(wall[name]) * 1e6:8.1f} wall {median(cpu[name]) * 1e6:8.1f} cpu "
        f"{server[name] / len(wall[name]) * 1e6:8.1f} server"
        for name in calls_
    }


async def roundtrips(url: str, server_pid: int, rounds: int) -> None:
    admin = aioredis.from_url(url, decode_responses=True)
    async with admin.pipeline(transaction=False) as pipe:
        for sym in SYMBOLS:
            pipe.hset(KEYS.marketstate(sym), mapping=market())
            pipe.hset(KEYS.risk(sym), mapping={"stop_dist_pct": "0.02", "proposed_sl": "98"})
            pipe.hset(KEYS.position(sym), mapping=position(sym))
        await pipe.execute()
    await admin.script_load(WRITE_SCRIPT)
    await admin.script_load(BATCH_SCRIPT)
    endpoint = endpoint_from_url(url)
    reader = RedisInputReader(admin, KEYS, endpoint)
    sink = RedisSink(endpoint, KEYS, proposal_ttl=180.0)
    wire = Wire(endpoint, name="bench", timeout=10.0)
    old = SinkBefore(Wire(endpoint, name="bench-before", timeout=10.0))
    ping = command("PING")
    results = await timed(
        rounds,
        server_pid,
        {
            "RedisInputReader.fetch, 250 symbols": lambda: reader.fetch(SYMBOLS),
            "ping": lambda: wire.roundtrip(ping, 1),
        },
    )
    print("round trips, µs per call (median)")
    for name, shown in results.items():
        print(f"    {name:<40} {shown}")
    for size in (250, 1):
        outs = outputs(SYMBOLS[:size])
        before, before_replies = before_payload(outs)
        per_call = calls(outs)
        plain = b"".join(per_call)
        batch = batch_payload(outs)
        print(f"write {size} proposal(s), µs per call (median; payload KiB)")
        results = await timed(
            rounds,
            server_pid,
            {
                "sink before: MULTI DEL+HSET+XADD, built": lambda o=outs: old.write(o),
                f"MULTI DEL+HSET+XADD ({len(before) / 1024:.0f})": (
                    lambda p=before, n=before_replies: wire.roundtrip(p, n)
                ),
                "sink now: RedisSink.write, built": lambda o=outs: sink.write(o),
                f"EVALSHA per output ({len(plain) / 1024:.0f})": (
                    lambda p=plain, n=size: wire.roundtrip(p, n)
                ),
                f"one EVALSHA per batch ({len(batch) / 1024:.0f})": (
                    lambda p=batch: wire.roundtrip(p, 1)
                ),
            },
        )
        for name, shown in results.items():
            print(f"    {name:<40} {shown}")
    reader.close()
    sink.close()
    wire.close()
    old.wire.close()
    await admin.aclose()


NOTIFY_SCRIPT = "for i = 1, tonumber(ARGV[1]) do redis.call('HSET', 'quantum:marketstate:S' .. (i % 1000), 'f', i) end"  # noqa: E501
PATTERN = "__keyspace@0__:quantum:marketstate:*"


async def notifications(url: str) -> tuple[float, float]:
    """(wall, CPU of this process) µs per notification, from the script's start until
    all have been received."""
    subscriber = await Subscriber.open(endpoint_from_url(url), [PATTERN], name="bench-notify")
    count = 0

    async def consume() -> None:
        nonlocal count
        while True:
            for message in await subscriber.read_batch():
                if message[0] == "pmessage":
                    count += 1

    task = asyncio.create_task(consume())
    producer = aioredis.from_url(url, decode_responses=True)
    start, start_cpu = time.perf_counter(), time.process_time()
    await producer.eval(NOTIFY_SCRIPT, 0, NOTIFICATIONS)
    while count < NOTIFICATIONS:  # noqa: ASYNC110 - a poll keeps the consumer bare
        await asyncio.sleep(0.001)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    await producer.aclose()
    task.cancel()
    subscriber.close()
    return elapsed / NOTIFICATIONS * 1e6, cpu / NOTIFICATIONS * 1e6


async def main(args: argparse.Namespace) -> None:
    with EmbeddedRedis(port=0 if args.tcp else None) as server:
        server.command("CONFIG", "SET", "client-output-buffer-limit", "pubsub 0 0 0")
        url = server.url
        print(
            f"server {server.binary.id} at {url}; loop {args.loop}; Python {sys.version.split()[0]}"
        )
        await roundtrips(url, server.pid, args.rounds)
        wall, cpu = min([await notifications(url) for _ in range(3)])
        print(f"{NOTIFICATIONS:,} notifications (best of 3): {wall:.2f} wall {cpu:.2f} cpu µs")


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
