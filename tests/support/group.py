"""Publisher groups in the integration tier: members as subprocesses (`python -m
harvest_async run` with GROUP set), a load generator, and the audit checks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aioredis

from harvest_async.core.keys import Keys
from harvest_async.core.partition import partition_of
from tests.support.live import market, position, risk

KEYS = Keys()
GROUP = "g"
PARTITIONS = 64
TTL = 2.0


def symbols(n: int) -> list[str]:
    return [f"S{i:03d}USDT" for i in range(n)]


class Member:
    """One instance of the group, a subprocess."""

    def __init__(self, name: str, url: str, logs: Path, **env: str) -> None:
        self.name = name
        self.url = url
        self.log_path = logs / f"{name}.log"
        self.env = {
            **os.environ,
            "REDIS_URL": url,
            "GROUP": GROUP,
            "INSTANCE": name,
            "PARTITIONS": str(PARTITIONS),
            "LEASE_TTL_SEC": str(TTL),
            "PUBLISH_INTERVAL_SEC": "0",
            "MAX_PUBLISH_AGE_SEC": "60",
            "POLL_INTERVAL_SEC": "0.5",
            "LOG_LEVEL": "INFO",
            **env,
        }
        self.env.pop("SYMBOLS", None)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Member:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "harvest_async", "run"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


async def holders(client: aioredis.Redis) -> list[str | None]:
    """Each partition's lease holder (None: no owner)."""
    keys = [KEYS.lease(GROUP, p) for p in range(PARTITIONS)]
    return list(await client.mget(keys))


def spread(owners: list[str | None]) -> Counter[str | None]:
    return Counter(owners)


async def wait_owned(
    client: aioredis.Redis, names: list[str], limit: float = 30.0, slack: int = 2
) -> list[str | None]:
    """Until every partition is held by one of `names`, each within `slack` of even."""
    deadline = time.monotonic() + limit
    even = PARTITIONS / len(names)
    while True:
        owners = await holders(client)
        counts = spread(owners)
        if set(counts) == set(names) and all(abs(counts[n] - even) <= slack for n in names):
            return owners
        if time.monotonic() > deadline:
            raise AssertionError(f"partitions not spread over {names}: {dict(counts)}")
        await anyio.sleep(0.1)


async def seed(client: aioredis.Redis, names: list[str]) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for sym in names:
            pipe.hset(KEYS.marketstate(sym), mapping=market())
            pipe.hset(KEYS.risk(sym), mapping=risk())
            pipe.hset(KEYS.position(sym), mapping=position(1.0, sym))
        await pipe.execute()


class Load:
    """Position changes at `rate` events a second, round robin over `names`; `last`
    holds each symbol's last pnl written."""

    def __init__(self, client: aioredis.Redis, names: list[str], rate: float) -> None:
        self.client = client
        self.names = names
        self.rate = rate
        self.last: dict[str, float] = {}
        self.sent = 0

    async def run(self, seconds: float) -> None:
        batch = max(1, int(self.rate / 20))
        start = time.monotonic()
        i = self.sent  # each run goes on where the last one stopped
        sent = 0
        while time.monotonic() - start < seconds:
            async with self.client.pipeline(transaction=False) as pipe:
                for _ in range(batch):
                    sym = self.names[i % len(self.names)]
                    pnl = round(1.0 + (i // len(self.names)) % 12, 2)  # R moves > R_EPS
                    self.last[sym] = pnl
                    pipe.hset(KEYS.position(sym), mapping=position(pnl, sym))
                    i += 1
                await pipe.execute()
            self.sent += batch
            sent += batch
            target = start + sent / self.rate
            await anyio.sleep(max(0.0, target - time.monotonic()))


async def audit(client: aioredis.Redis, start: str = "-") -> list[tuple[str, dict[str, str]]]:
    return [(i, f) for i, f in await client.xrange(KEYS.stream, start, "+")]


def no_duplicate_seq(entries: list[tuple[str, dict[str, str]]]) -> None:
    seen = Counter((f["symbol"], f["seq"]) for _, f in entries)
    dup = [k for k, n in seen.items() if n > 1]
    assert not dup, f"(symbol, seq) written twice: {dup[:5]}"


def epochs_never_decrease(entries: list[tuple[str, dict[str, str]]]) -> None:
    """Per partition, in stream order: lease_epoch never decreases, and each epoch was
    written by one instance only."""
    last: dict[int, int] = {}
    writer: dict[tuple[int, int], str] = {}
    for entry_id, f in entries:
        p = partition_of(f["symbol"], PARTITIONS)
        epoch = int(f["lease_epoch"])
        assert epoch >= last.get(p, 0), f"partition {p}: epoch {epoch} after {last[p]} ({entry_id})"
        last[p] = epoch
        who = writer.setdefault((p, epoch), f["instance"])
        assert who == f["instance"], f"partition {p} epoch {epoch}: {who} and {f['instance']}"


def writers_by_symbol(entries: list[tuple[str, dict[str, str]]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for _, f in entries:
        out[f["symbol"]].add(f["instance"])
    return out


def stream_id(at: float) -> str:
    """A stream id at wall time `at` (entries from then on)."""
    return f"{int(at * 1000)}-0"


async def final_inputs_published(client: Any, load: Load, limit: float = 15.0) -> None:
    """Until every symbol's proposal shows the last position the load wrote."""
    deadline = time.monotonic() + limit
    while True:
        async with client.pipeline(transaction=False) as pipe:
            for sym in load.last:
                pipe.hget(KEYS.proposal(sym), "position_unrealized_pnl")
            got = await pipe.execute()
        behind = [
            s for s, v in zip(load.last, got, strict=True) if v is None or float(v) != load.last[s]
        ]
        if not behind:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(behind)} symbols' final inputs unpublished: {behind[:5]}")
        await anyio.sleep(0.2)
