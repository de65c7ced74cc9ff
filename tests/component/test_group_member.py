"""The group member's loop (service.group) on fakes: leases in memory, the runner on the
shipped fakes. What it owns, what it writes with, when it stops writing."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import anyio
import pytest

from harvest_async.core.group import owned_by
from harvest_async.core.partition import partition_of
from harvest_async.errors import RedisUnavailable
from harvest_async.redis_io.leases import FenceToken
from harvest_async.service.group import GroupMember
from harvest_async.testing import MemoryStore
from tests.support.component import P25_PNL, build, idle, inp, running

PARTS = 8
SYMS = [f"S{i}" for i in range(20)]


class FakeLeases:
    """The lease keys as a dict: partition -> (holder, epoch)."""

    def __init__(self, instance: str, table: dict[int, tuple[str, int]] | None = None) -> None:
        self.instance = instance
        self.group = "g"
        self.table = table if table is not None else {}
        self.epochs: dict[int, int] = {}
        self.down = False

    def _up(self) -> None:
        if self.down:
            raise RedisUnavailable("down (test)")

    def token(self, partition: int, epoch: int) -> FenceToken:
        return FenceToken(f"lease:{partition}", f"epoch:{partition}", self.instance, epoch)

    async def acquire(self, partitions: Iterable[int]) -> dict[int, int | str]:
        self._up()
        out: dict[int, int | str] = {}
        for p in partitions:
            holder = self.table.get(p)
            if holder is not None and holder[0] != self.instance:
                out[p] = holder[0]
                continue
            epoch = self.epochs[p] = self.epochs.get(p, 0) + 1
            self.table[p] = (self.instance, epoch)
            out[p] = epoch
        return out

    async def renew(self, held: Mapping[int, int]) -> set[int]:
        self._up()
        return {p for p, e in held.items() if self.table.get(p) != (self.instance, e)}

    async def release(self, held: Mapping[int, int]) -> set[int]:
        self._up()
        lost = await self.renew(held)
        for p in held:
            if p not in lost:
                del self.table[p]
        return lost


def member_for(leases: FakeLeases, beats: dict[str, Any], ttl: float) -> GroupMember:
    async def read_beats() -> dict[str, Any]:
        return beats

    fake: Any = leases
    h_clock: Any = type("C", (), {"now": staticmethod(time.time)})()
    return GroupMember(fake, h_clock, read_beats, partitions=PARTS, ttl=ttl)


async def test_a_member_takes_its_share_and_writes_with_its_epochs() -> None:
    store = MemoryStore(inp(s, P25_PNL) for s in SYMS)
    h = build(None, store=store)
    leases = FakeLeases("me")
    beats = {"other": ("g", time.time() + 3600)}  # alive for the test's duration
    member = member_for(leases, beats, ttl=4.0)
    member.bind(h.runner)
    async with running(h):
        await idle(h)
        assert h.sink.outputs == []  # nothing owned yet: nothing written
        await member.step()
        mine = owned_by("me", ["me", "other"], PARTS)
        assert set(member.held) == mine
        await idle(h)
        written = {o.symbol for o in h.sink.outputs}
        assert written == {s for s in SYMS if partition_of(s, PARTS) in mine}
        sym = next(iter(written))
        assert member.fence(sym).epoch == 1
        other = next(s for s in SYMS if s not in written)
        assert member.fence(other).epoch == 0  # not ours: the server would refuse it


async def test_not_renewed_for_0_6_ttl_it_stops_writing_then_rejoins() -> None:
    store = MemoryStore(inp(s, P25_PNL) for s in SYMS)
    h = build(None, store=store)
    leases = FakeLeases("me")
    member = member_for(leases, {}, ttl=0.5)
    member.bind(h.runner)
    async with running(h):
        await member.step()
        assert len(member.held) == PARTS
        await idle(h)
        leases.down = True
        with pytest.raises(RedisUnavailable):
            await member.step()  # the renewal fails
        assert member.fence(SYMS[0]).epoch == 1
        await anyio.sleep(0.35)  # > 0.6 x TTL since the last renewal
        assert member.fence(SYMS[0]).epoch == 0  # stops writing before the lease can expire
        with pytest.raises(RedisUnavailable):
            await member.step()
        assert member.held == {} and h.engine.symbols() == []  # given up, state dropped
        leases.down = False
        await member.step()  # re-joins: the lease still named it, taken with a new epoch
        assert member.held == dict.fromkeys(range(PARTS), 2)
        await idle(h)
        assert sorted(h.engine.symbols()) == sorted(SYMS)


async def test_a_fenced_write_gives_the_partition_up_once() -> None:
    h = build(None, store=MemoryStore(inp(s, P25_PNL) for s in SYMS))
    leases = FakeLeases("me")
    member = member_for(leases, {}, ttl=4.0)
    member.bind(h.runner)
    async with running(h):
        await member.step()
        await idle(h)
        sym = SYMS[0]
        p = partition_of(sym, PARTS)
        member.fenced([o for o in h.sink.outputs if o.symbol == sym], "FENCED (test)")
        assert p not in member.held and member.stats.fenced_writes == 1
        assert sym not in h.engine.symbols()
