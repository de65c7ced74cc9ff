"""Outage benchmark: what `harvest-async run` logs while Redis is down, and how soon it
publishes again once Redis is back.

Run: `.venv/bin/python bench/outage.py [--outage 60] [--rounds 3] [--symbols 20]`
(`--quick`: one 10 s outage). Prints numbers, asserts nothing.

Against a private server (EmbeddedRedis, unix socket, no persistence), the service runs as
its own process (`python -m harvest_async run`, SYMBOLS=*, LOG_LEVEL=INFO, text logs,
metrics on a free port) with `--symbols` positions published. Each round:

1. the server is killed (SIGKILL: a crash) and stays down `--outage` seconds; the service's
   log lines written meanwhile are counted (per minute of outage, and by level);
2. the server starts again, empty, at the same address, and the producers write every
   symbol's inputs back at once (what they do after a Redis restart). Measured from the
   server answering PING: the first proposal back, every proposal back, and the outage's
   end line ("available again after ...");
3. `harvest_resyncs_total` (all reasons) before and after: resyncs, not retries.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import redis

from harvest_async import __version__
from harvest_async.core.keys import Keys
from harvest_async.tools.embedded_server import EmbeddedRedis, find_redis_servers

KEYS = Keys()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_inputs(client: redis.Redis, symbols: list[str]) -> None:
    now = time.time()
    with client.pipeline(transaction=False) as pipe:
        for i, symbol in enumerate(symbols):
            pnl = 5.0 + (i % 3) * 4.0  # PARTIAL_25 / _50 / _75 with a 2 % stop
            pipe.hset(
                KEYS.marketstate(symbol),
                mapping={
                    "sigma": "0.005",
                    "ts": "0.5",
                    "p_trend": "0.6",
                    "p_mr": "0.2",
                    "p_chop": "0.2",
                    "ts_timestamp": str(int(now)),
                },
            )
            pipe.hset(KEYS.risk(symbol), mapping={"stop_dist_pct": "0.02"})
            pipe.hset(
                KEYS.position(symbol),
                mapping={
                    "symbol": symbol,
                    "side": "LONG",
                    "quantity": "1.0",
                    "entry_price": "100.0",
                    "current_price": repr(100.0 + pnl),
                    "unrealized_pnl": repr(pnl),
                    "created_at": str(int(now)),
                    "ts_epoch": repr(round(now, 3)),
                },
            )
        pipe.execute()


def published(client: redis.Redis, symbols: list[str]) -> int:
    with client.pipeline(transaction=False) as pipe:
        for symbol in symbols:
            pipe.exists(KEYS.proposal(symbol))
        return sum(int(x) for x in pipe.execute())


def wait_until(probe: object, limit: float, every: float = 0.005) -> float | None:
    """Seconds until `probe()` is truthy (None: not within `limit`)."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        if probe():  # type: ignore[operator]
            return time.perf_counter() - started
        time.sleep(every)
    return None


def resyncs(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("harvest_resyncs_total{")
    )


def new_lines(log: Path, offset: int) -> tuple[list[str], int]:
    data = log.read_bytes()
    return data[offset:].decode(errors="replace").splitlines(), len(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outage", type=float, default=60.0, help="seconds Redis stays down")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="one 10 s outage")
    args = ap.parse_args()
    if args.quick:
        args.outage, args.rounds = 10.0, 1
    symbols = [f"SYM{i:03d}USDT" for i in range(args.symbols)]
    binary = find_redis_servers()[0]
    print(
        f"harvest-async {__version__}, Python {platform.python_version()}, {binary.id}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {args.symbols} symbols, "
        f"{args.rounds} x {args.outage:g} s outages"
    )
    with EmbeddedRedis(binary) as server, tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "service.log"
        port = free_port()
        env = {
            **os.environ,
            "REDIS_URL": server.url,
            "SYMBOLS": "*",
            "INSTANCE": "bench-outage",
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "text",
            "METRICS_PORT": str(port),
        }
        env.pop("JOURNAL_STREAM", None)
        client = redis.Redis.from_url(server.url, decode_responses=True)
        write_inputs(client, symbols)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "harvest_async", "run"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            if wait_until(lambda: published(client, symbols) == len(symbols), 30) is None:
                raise SystemExit("the service did not publish:\n" + log.read_text())
            for n in range(1, args.rounds + 1):
                time.sleep(2)  # settled: the publishes' own lines are not counted
                before = resyncs(port)
                _, offset = new_lines(log, 0)
                server.kill()
                time.sleep(args.outage)
                during, offset = new_lines(log, offset)
                server.start()
                client = redis.Redis.from_url(server.url, decode_responses=True)
                back = time.perf_counter()
                write_inputs(client, symbols)
                first = wait_until(lambda c=client: published(c, symbols) > 0, 60)
                # (run after the first wait: the time to all is their sum)
                every = wait_until(lambda c=client: published(c, symbols) == len(symbols), 60)
                ended = wait_until(lambda: "available again after" in log.read_text()[-20000:], 30)
                end_s = time.perf_counter() - back if ended is not None else None
                time.sleep(1)
                after, _ = new_lines(log, offset)
                levels = {
                    lvl: sum(1 for line in during if f" {lvl} " in line)
                    for lvl in ("WARNING", "INFO", "ERROR")
                }
                ends = [line for line in after if "available again after" in line]
                duration = re.search(r"after ([0-9.]+) s of outage", ends[-1]) if ends else None
                all_back = None if every is None else (first or 0) + every
                print(
                    f"round {n}: {len(during)} lines in {args.outage:g} s of outage "
                    f"({len(during) / args.outage * 60:.1f}/min; by level {levels}); "
                    f"after Redis returned: {len(after)} lines; first proposal back "
                    f"{first if first is None else f'{first * 1000:.0f} ms'}, all "
                    f"{len(symbols)} back {all_back if all_back is None else f'{all_back:.2f} s'}"
                    f", outage end logged after {end_s if end_s is None else f'{end_s:.2f} s'} "
                    f"(says {duration.group(1) if duration else '?'} s); resyncs "
                    f"+{resyncs(port) - before:g}"
                )
                for line in during + after:
                    print("    |", line[:160])
        finally:
            proc.terminate()
            proc.wait(20)


if __name__ == "__main__":
    main()
