"""Publisher groups on a real server (both flavours): the lease scripts (redis_io.leases)
and the fenced proposal write (write script version 2, redis_io.sink)."""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis

from harvest_async.core.engine import Engine, EngineConfig
from harvest_async.core.input_hashes import SymbolInputs
from harvest_async.core.keys import Keys
from harvest_async.core.partition import partition_of
from harvest_async.core.ports import PublishOut
from harvest_async.errors import ConfigError, Fenced
from harvest_async.redis_io.leases import FenceToken, Leases
from harvest_async.redis_io.sink import RedisSink
from harvest_async.redis_io.wire import endpoint_from_url
from harvest_async.service.app import serve
from tests.support.live import (
    SYM,
    make_settings,
    market,
    position,
    put_inputs,
    risk,
    running,
    shows_pnl,
    wait_for,
)

KEYS = Keys()


def publish(symbol: str = SYM) -> PublishOut:
    engine = Engine(EngineConfig(symbols=(symbol,), proposal_ttl_sec=90.0))
    engine.observe(SymbolInputs(symbol, market(), risk(), position(5.0, symbol)))
    out = engine.evaluate(symbol, time.time())
    assert isinstance(out, PublishOut)
    return out


async def test_acquire_renew_release(client: aioredis.Redis) -> None:
    a = Leases(client, KEYS, "g", "a", ttl=2.0)
    b = Leases(client, KEYS, "g", "b", ttl=2.0)
    assert await a.acquire([0, 1]) == {0: 1, 1: 1}
    assert await b.acquire([0, 2]) == {0: "a", 2: 1}
    assert await client.get(KEYS.lease("g", 0)) == "a"
    assert 0 < await client.pttl(KEYS.lease("g", 0)) <= 2000
    assert await a.renew({0: 1, 1: 1}) == set()
    assert await b.renew({0: 1}) == {0}  # not b's
    # a lease still naming its holder is taken again with a new epoch (fences the old one)
    assert await a.acquire([1]) == {1: 2}
    assert await a.renew({1: 1}) == {1}  # the old epoch is no longer good
    assert await a.release({0: 1, 1: 2}) == set()
    assert await client.exists(KEYS.lease("g", 0), KEYS.lease("g", 1)) == 0
    assert await b.acquire([0]) == {0: 2}  # the epoch only grows
    state = await a.read(3)
    assert state[0].holder == "b" and state[0].epoch == 2
    assert state[1].holder is None and state[1].epoch == 2
    assert state[2].holder == "b" and state[2].ttl_ms is not None


async def test_a_lease_expires_by_its_ttl(client: aioredis.Redis) -> None:
    a = Leases(client, KEYS, "g", "a", ttl=1.0)
    b = Leases(client, KEYS, "g", "b", ttl=1.0)
    assert await a.acquire([5]) == {5: 1}
    await anyio.sleep(1.1)
    assert await b.acquire([5]) == {5: 2}
    assert await a.renew({5: 1}) == {5}


async def test_fenced_write_lands_only_with_the_lease(
    client: aioredis.Redis, redis_url: str
) -> None:
    leases = Leases(client, KEYS, "g", "a", ttl=5.0)
    epoch = await leases.acquire([3])
    held = {"token": leases.token(3, epoch[3])}
    sink = RedisSink(
        endpoint_from_url(redis_url), KEYS, proposal_ttl=90.0, fence=lambda _s: held["token"]
    )
    try:
        out = publish()
        await sink.write([out])
        entries = [f for _id, f in await client.xrange(KEYS.stream)]
        assert entries[-1]["instance"] == "a" and entries[-1]["lease_epoch"] == "1"
        assert entries[-1]["event"] == "publish" and entries[-1]["seq"] == str(out.seq)
        assert await client.hget(KEYS.proposal(SYM), "seq") == str(out.seq)
        assert "lease_epoch" not in await client.hgetall(KEYS.proposal(SYM))

        # another member takes the partition (after the lease expired): refused, unwritten
        await client.delete(KEYS.lease("g", 3))
        other = Leases(client, KEYS, "g", "b", ttl=5.0)
        assert await other.acquire([3]) == {3: 2}
        later = publish()
        with pytest.raises(Fenced) as exc:
            await sink.write([later])
        assert "FENCED" in exc.value.reply and exc.value.landed == ()
        assert len(await client.xrange(KEYS.stream)) == 1
        assert await client.hget(KEYS.proposal(SYM), "seq") == str(out.seq)

        # the lease names us again but at another epoch: still refused
        await client.set(KEYS.lease("g", 3), "a")
        with pytest.raises(Fenced):
            await sink.write([later])
        # an unheld token (epoch 0) never matches
        held["token"] = FenceToken(KEYS.lease("g", 3), KEYS.epoch("g", 3), "a", 0)
        with pytest.raises(Fenced):
            await sink.write([later])
        assert len(await client.xrange(KEYS.stream)) == 1
    finally:
        sink.close()


async def test_without_a_group_the_write_is_version_1(
    client: aioredis.Redis, redis_url: str
) -> None:
    sink = RedisSink(endpoint_from_url(redis_url), KEYS, proposal_ttl=90.0)
    try:
        await sink.write([publish()])
        ((_id, entry),) = await client.xrange(KEYS.stream)
        assert "lease_epoch" not in entry and "instance" not in entry
        assert await client.keys("quantum:harvest:lease:*") == []
    finally:
        sink.close()


def _acl_block(start: str) -> list[str]:
    """The rules of the docs/operations.md code block starting with `start`."""
    text = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    found = re.search(r"```sh\n(" + re.escape(start) + r".*?)```", text, re.S)
    assert found, f"docs/operations.md lost its {start!r} command"
    words = shlex.split(found.group(1).replace("\\\n", " "))
    return [w.replace("$HARVEST_PASSWORD", "pw") for w in words[4:] if w != "harvest"]


async def test_the_documented_group_acl_is_enough(client: aioredis.Redis, redis_url: str) -> None:
    info = await client.info("server")
    old = "valkey_version" not in info and str(info["redis_version"]).startswith("6.")
    rules = [
        *_acl_block("redis-cli ACL SETUSER harvest on"),
        *_acl_block("redis-cli ACL SETUSER harvest +get"),
    ]
    rules = [r.replace("desk-a", "g") for r in rules]
    if old:
        rules = [r.replace("%R~", "~").replace("evalsha_ro", "evalsha") for r in rules]
    await client.execute_command("ACL", "SETUSER", "grp", "reset", *rules)
    scheme, rest = redis_url.split("://", 1)
    url = f"{scheme}://grp:pw@{rest}"
    await put_inputs(client)
    settings = make_settings(url, GROUP="g", PARTITIONS="4", INSTANCE="vps-1", SYMBOLS="*")
    async with running(settings):
        await wait_for(lambda: shows_pnl(client, 0.0), "the first publish")
        assert await client.get(KEYS.lease("g", partition_of(SYM, 4))) == "vps-1"
        (_id, entry), *_ = await client.xrange(KEYS.stream)
        assert entry["instance"] == "vps-1" and entry["lease_epoch"] == "1"
    # a clean stop released the leases
    assert await client.exists(*(KEYS.lease("g", p) for p in range(4))) == 0


async def test_a_member_with_other_partitions_does_not_start(
    client: aioredis.Redis, redis_url: str
) -> None:
    fields = {"instance": "other", "group": "g", "partitions": "8"}
    fields["last_beat_epoch"] = repr(time.time())
    await client.hset(KEYS.liveness("other"), mapping=fields)
    settings = make_settings(redis_url, GROUP="g", PARTITIONS="4", INSTANCE="me", SYMBOLS="*")
    with pytest.raises(ConfigError) as exc:
        await serve(settings, handle_signals=False)
    assert exc.value.variable == "PARTITIONS" and "member other" in str(exc.value)
    assert await client.keys("quantum:harvest:lease:*") == []
