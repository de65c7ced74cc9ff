"""Publisher groups (INTERFACE §6) end to end: instances as subprocesses sharing one
symbol universe on a real server. The scenarios of issue 13; they take a while each, so
they run on one server flavour (the fenced write itself runs on every flavour:
test_group_fence.py). LEASE_TTL_SEC is 2 here, to keep the tier short."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis

from harvest_async.core.partition import partition_of
from harvest_async.tools.server_binaries import ServerBinary
from tests.support.group import (
    KEYS,
    PARTITIONS,
    TTL,
    Load,
    Member,
    audit,
    epochs_never_decrease,
    final_inputs_published,
    holders,
    no_duplicate_seq,
    seed,
    stream_id,
    symbols,
    wait_owned,
    writers_by_symbol,
)

pytestmark = pytest.mark.slow
SYMS = symbols(300)


@pytest.fixture
def one_flavour(redis_binary: ServerBinary) -> None:
    """Redis 7 and Valkey 8 (the fence and lease scripts run on 6.2 too: test_group_fence)."""
    if redis_binary.id.startswith("redis-6."):
        pytest.skip("the group scenarios run on Redis 7 and Valkey 8 to keep the tier short")


@pytest.fixture
def members(redis_url: str, tmp_path: Path) -> Iterator[dict[str, Member]]:
    started: dict[str, Member] = {}

    def make(name: str) -> Member:
        started[name] = Member(name, redis_url, tmp_path)
        return started[name]

    yield started  # filled by `spawn`
    for m in started.values():
        if m.proc is not None and m.proc.poll() is None:
            m.proc.kill()
            m.proc.wait(5)


def spawn(members: dict[str, Member], url: str, logs: Path, name: str) -> Member:
    m = members[name] = Member(name, url, logs)
    return m.start()


async def test_three_members_share_the_symbols_and_a_kill_is_taken_over(
    one_flavour: None,
    client: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
    members: dict[str, Member],
) -> None:
    """Scenarios 1 and 2: every symbol published by exactly one member, partitions
    within ±2 of even; kill -9 one: its partitions owned again within TTL + 1 s, no
    (symbol, seq) twice, every symbol's final input published."""
    await seed(client, SYMS)
    names = ["a", "b", "c"]
    for name in names:
        spawn(members, redis_url, tmp_path, name)
    await wait_owned(client, names)
    await anyio.sleep(1.0)  # the takeovers' first passes
    steady = stream_id(time.time())
    load = Load(client, SYMS, 500)
    await load.run(4.0)
    await final_inputs_published(client, load)
    entries = await audit(client, steady)
    assert len(entries) > 500
    writers = writers_by_symbol(entries)
    assert {s: w for s, w in writers.items() if len(w) != 1} == {}
    owners = await holders(client)
    for _, f in entries:  # and by the partition's owner
        assert owners[partition_of(f["symbol"], PARTITIONS)] == f["instance"]

    # kill -9 "a": its partitions are someone else's within TTL + 1 s
    lost = {p for p, who in enumerate(owners) if who == "a"}
    async with anyio.create_task_group() as tg:
        tg.start_soon(load.run, 6.0)
        await anyio.sleep(1.0)
        members["a"].kill()
        killed, killed_at = time.monotonic(), time.time()
        while True:
            now_owners = await holders(client)
            if all(now_owners[p] in ("b", "c") for p in lost):
                took = time.monotonic() - killed
                break
            assert time.monotonic() - killed < TTL + 1.0, f"not taken over: {now_owners}"
            await anyio.sleep(0.05)
    assert took <= TTL + 1.0
    # and its symbols publish again within TTL + 1 s (their inputs changed since the
    # kill: the takeover's pass writes them at once)
    moved = {s for s in SYMS if partition_of(s, PARTITIONS) in lost}
    first: dict[str, float] = {}
    for entry_id, f in await audit(client, stream_id(killed_at)):
        if f["symbol"] in moved and f["instance"] != "a":
            first.setdefault(f["symbol"], int(entry_id.split("-")[0]) / 1000 - killed_at)
    assert set(first) == moved
    print(f"owned again after {took:.2f} s, published again after {max(first.values()):.2f} s")
    assert max(first.values()) <= TTL + 1.0, sorted(first.values())[-5:]
    await final_inputs_published(client, load)
    everything = await audit(client)
    no_duplicate_seq(everything)
    epochs_never_decrease(everything)
    await wait_owned(client, ["b", "c"], limit=5.0)


async def three_members(
    client: aioredis.Redis, url: str, logs: Path, members: dict[str, Member]
) -> list[str | None]:
    await seed(client, SYMS)
    for name in ("a", "b", "c"):
        spawn(members, url, logs, name)
    owners = await wait_owned(client, ["a", "b", "c"])
    await anyio.sleep(1.0)
    return owners


async def test_a_frozen_member_finds_its_writes_refused(
    one_flavour: None,
    client: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
    members: dict[str, Member],
) -> None:
    """Scenario 3: SIGSTOP an owner for 2 x TTL, then SIGCONT: no audit entry from it for
    a partition that moved under the epoch it held; per partition, epochs never decrease
    in stream order (and each epoch has one writer)."""
    owners = await three_members(client, redis_url, tmp_path, members)
    held_before = {
        p: int(await client.get(KEYS.epoch("g", p)) or 0) for p, w in enumerate(owners) if w == "a"
    }
    load = Load(client, SYMS, 500)
    async with anyio.create_task_group() as tg:
        tg.start_soon(load.run, 4 * TTL + 3)
        await anyio.sleep(1.0)
        members["a"].signal(signal.SIGSTOP)
        await anyio.sleep(2 * TTL)
        moved = {p for p, w in enumerate(await holders(client)) if p in held_before and w != "a"}
        members["a"].signal(signal.SIGCONT)
        woke = time.time()
    assert moved == set(held_before)  # all of them: its lease had expired
    await final_inputs_published(client, load)
    entries = await audit(client)
    no_duplicate_seq(entries)
    epochs_never_decrease(entries)
    stale = [
        f
        for _, f in await audit(client, stream_id(woke))
        if f["instance"] == "a"
        and held_before.get(partition_of(f["symbol"], PARTITIONS)) == int(f["lease_epoch"])
    ]
    assert stale == []
    await wait_owned(client, ["a", "b", "c"], limit=10.0)  # it re-joins


async def test_a_fourth_member_takes_a_quarter_and_nothing_is_published_twice(
    one_flavour: None,
    client: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
    members: dict[str, Member],
) -> None:
    """Scenario 4: a fourth member joins: ~1/4 of the partitions move to it, the others
    release what they lost, and the hand-over writes nothing (the proposals in place are
    adopted)."""
    await three_members(client, redis_url, tmp_path, members)
    load = Load(client, SYMS, 500)
    await load.run(2.0)
    await final_inputs_published(client, load)
    await anyio.sleep(0.5)
    quiet = stream_id(time.time())
    spawn(members, redis_url, tmp_path, "d")
    owners = await wait_owned(client, ["a", "b", "c", "d"])
    assert abs(owners.count("d") - PARTITIONS / 4) <= 2
    await anyio.sleep(1.5)  # the takeovers' passes
    assert await audit(client, quiet) == []
    for name in ("a", "b", "c"):
        assert "rebalanced to another member" in members[name].log()
    # and it publishes what changes afterwards
    await load.run(2.0)
    await final_inputs_published(client, load)
    entries = await audit(client)
    no_duplicate_seq(entries)
    epochs_never_decrease(entries)


async def test_a_rolling_restart_leaves_no_partition_without_owner(
    one_flavour: None,
    client: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
    members: dict[str, Member],
) -> None:
    """Scenario 5: each member restarted in turn (SIGTERM, start again): no partition is
    without an owner for more than TTL + 1 s, and no publish storm (nothing changes, so
    nothing is written)."""
    await three_members(client, redis_url, tmp_path, members)
    quiet = stream_id(time.time())
    ownerless_since: dict[int, float] = {}
    longest = 0.0
    done = anyio.Event()

    async def sample() -> None:
        nonlocal longest
        while not done.is_set():
            now = time.monotonic()
            for p, who in enumerate(await holders(client)):
                if who is None:
                    longest = max(longest, now - ownerless_since.setdefault(p, now))
                else:
                    ownerless_since.pop(p, None)
            await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sample)
        for name in ("a", "b", "c"):
            assert members[name].stop() == 0
            members[name].start()
            await wait_owned(client, ["a", "b", "c"], limit=15.0)
        done.set()
    assert longest <= TTL + 1.0
    written = await audit(client, quiet)
    assert len(written) <= 5, written  # no storm
    for name in ("a", "b", "c"):
        assert "partitions lost (stopping)" in members[name].log()
