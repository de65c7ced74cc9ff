"""doctor's `group` check (GROUP set): members, partition owners; an ownerless partition
is a FAIL."""

from __future__ import annotations

import os
import sys
import time

import anyio
import redis.asyncio as aioredis

from harvest_async.config import settings_from_env
from harvest_async.core.keys import Keys
from harvest_async.redis_io.leases import Leases
from harvest_async.tools.doctor import run_doctor

KEYS = Keys()


async def beat(client: aioredis.Redis, instance: str, group: str) -> None:
    fields = {"instance": instance, "pid": "1", "host": "h", "version": "0", "symbols": "1"}
    fields |= {"group": group, "last_beat_epoch": repr(time.time())}
    await client.hset(KEYS.liveness(instance), mapping=fields)
    await client.expire(KEYS.liveness(instance), 30)


async def test_group_check(client: aioredis.Redis, redis_url: str) -> None:
    settings = settings_from_env({"REDIS_URL": redis_url, "GROUP": "g", "PARTITIONS": "8"})
    await beat(client, "a", "g")
    await beat(client, "b", "g")
    await Leases(client, KEYS, "g", "a", 30).acquire(range(4))
    await Leases(client, KEYS, "g", "b", 30).acquire(range(4, 8))

    report = await run_doctor(settings, only=["publisher", "group"])
    checks = {c.name: c for c in report.checks}
    assert checks["publisher"].status == "PASS"
    group = checks["group"]
    assert group.status == "PASS", group.message
    assert "2 members (a: 4, b: 4)" in group.message
    assert group.details["owners"]["5"] == {"owner": "b", "epoch": 1}

    await client.delete(KEYS.lease("g", 6))
    group = {c.name: c for c in (await run_doctor(settings, only=["group"])).checks}["group"]
    assert group.status == "FAIL" and "1 partitions without an owner: 6" in group.message

    # without GROUP there is no group check
    plain = settings_from_env({"REDIS_URL": redis_url})
    assert "group" not in {c.name for c in (await run_doctor(plain)).checks}


async def test_watch_shows_each_symbols_owner(client: aioredis.Redis, redis_url: str) -> None:
    from harvest_async.core.partition import partition_of

    fields = {"symbol": "BTCUSDT", "harvest_action": "NONE", "R_net": "0.4"}
    fields |= {"kill_score": "0.1", "ts_epoch": repr(time.time()), "trigger": "change"}
    await client.hset(KEYS.proposal("BTCUSDT"), mapping=fields)
    await client.hset(KEYS.proposal("ETHUSDT"), mapping={**fields, "symbol": "ETHUSDT"})
    await Leases(client, KEYS, "g", "member-a", 30).acquire([partition_of("BTCUSDT", 8)])
    env = {**os.environ, "REDIS_URL": redis_url, "GROUP": "g", "PARTITIONS": "8"}
    done = await anyio.run_process(
        [sys.executable, "-m", "harvest_async", "watch", "--once"], check=False, env=env
    )
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.decode().splitlines()
    assert any(line.split()[:2] == ["SYMBOL", "OWNER"] for line in lines)
    assert "partitions of 8: member-a 1, 7 WITHOUT OWNER" in done.stdout.decode()
    btc = next(line for line in lines if line.startswith("BTCUSDT"))
    assert btc.split()[1] == "member-a"
    if partition_of("ETHUSDT", 8) != partition_of("BTCUSDT", 8):
        eth = next(line for line in lines if line.startswith("ETHUSDT"))
        assert eth.split()[1] == "(none)"
