"""A publisher group's member (INTERFACE §6, docs/operations.md "Publisher groups").

One loop, every LEASE_TTL_SEC/8: read who is live (the liveness keys carry the group),
compute this member's share (core.group: rendezvous hashing with bounded load), give up
what it should no longer own (state dropped first, then the lease released: the new
owner takes it at its next tick), try to take what it should own and does not (the lease
decides between two members whose views differ), and every TTL/4 renew what it holds.

What "owning" means to the rest of the service:

* the engine tracks only owned symbols (`Engine.scope`): every member sees every
  notification and ignores the symbols it does not own;
* every write is fenced (`fence`): the write script checks the partition's lease and
  epoch; a partition whose lease was not renewed for 0.6 x TTL gets epoch 0, which never
  matches, so a member that was frozen (SIGSTOP, a GC pause, a network partition) finds
  its writes refused, before its lease can have expired and been taken;
* a fenced refusal (`fenced`) is counted, logged once, and the partition given up;
* a gained partition is taken over (`Runner.take_over`): its proposals are adopted as at
  a restart, and its symbols computed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping

import anyio
from anyio.abc import TaskStatus

from harvest_async.clock import Clock, monotonic
from harvest_async.core.group import live_members, owned_by
from harvest_async.core.partition import partition_of
from harvest_async.core.ports import Output
from harvest_async.errors import RedisUnavailable
from harvest_async.redis_io.leases import FenceToken, Leases
from harvest_async.service.runner import Runner

__all__ = ["RENEW_BUCKETS", "GroupMember", "GroupStats"]

log = logging.getLogger(__name__)

RENEW_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
Beats = Mapping[str, tuple[str, float | None]]  # instance -> (group, last beat epoch)


class GroupStats:
    """What the metrics and the logs report."""

    def __init__(self) -> None:
        self.takeovers = 0  # partitions gained
        self.losses = 0  # partitions given up or lost
        self.fenced_writes = 0  # outputs the write script refused
        # renewal round trips: a histogram's counts per bucket (+Inf last) and sum
        self.renew_counts = [0] * (len(RENEW_BUCKETS) + 1)
        self.renew_sum = 0.0
        self.members = 0

    def renewed(self, seconds: float) -> None:
        self.renew_sum += seconds
        i = next((i for i, b in enumerate(RENEW_BUCKETS) if seconds <= b), len(RENEW_BUCKETS))
        self.renew_counts[i] += 1


class GroupMember:
    def __init__(
        self,
        leases: Leases,
        clock: Clock,
        read_beats: Callable[[], Awaitable[Beats]],
        *,
        partitions: int,
        ttl: float,
    ) -> None:
        self.leases = leases
        self._runner: Runner | None = None
        self.clock = clock
        self.read_beats = read_beats
        self.instance = leases.instance
        self.group = leases.group
        self.partitions = partitions
        self.ttl = ttl
        self.held: dict[int, int] = {}  # partition -> the epoch this member holds it at
        self._renewed: dict[int, float] = {}  # partition -> monotonic time of its last renew
        self._part: dict[str, int] = {}  # symbol -> partition (blake2b once per symbol)
        self._next_renew = 0.0
        self._fenced_logged: set[int] = set()
        self.stats = GroupStats()
        self.members: list[str] = [self.instance]

    def bind(self, runner: Runner) -> None:
        """Limit `runner`'s engine to this member's share (nothing until partitions are
        gained); before the runner's first pass."""
        self._runner = runner
        runner.engine.scope(self.owns)

    @property
    def runner(self) -> Runner:
        assert self._runner is not None, "GroupMember.bind(runner) first"
        return self._runner

    # -- what the engine and the sink ask ---------------------------------------------------
    def partition(self, symbol: str) -> int:
        p = self._part.get(symbol)
        if p is None:
            if len(self._part) > 100_000:
                self._part.clear()  # bounded under a churning universe
            p = self._part[symbol] = partition_of(symbol, self.partitions)
        return p

    def owns(self, symbol: str) -> bool:
        # on every notification of every member: the cached lookup inline
        p = self._part.get(symbol)
        return (p if p is not None else self.partition(symbol)) in self.held

    def fence(self, symbol: str) -> FenceToken:
        """The write script's token: epoch 0 (refused) unless held and renewed in time."""
        p = self.partition(symbol)
        epoch = self.held.get(p, 0)
        renewed = self._renewed.get(p)
        if renewed is None or monotonic() - renewed > 0.6 * self.ttl:
            epoch = 0  # not renewed for 0.6 x TTL: stop writing before it can expire
        return self.leases.token(p, epoch)

    def fenced(self, outputs: list[Output], reply: str) -> None:
        """The write script refused `outputs`: their partitions are someone else's."""
        self.stats.fenced_writes += len(outputs)
        parts = {self.partition(o.symbol) for o in outputs}
        new = parts - self._fenced_logged
        if new:
            self._fenced_logged |= new
            log.warning(
                "writes fenced off for partitions %s (%s): giving them up",
                _ranges(new),
                reply,
                extra={"event": "fenced", "partitions": sorted(new)},
            )
        self._lose(parts & set(self.held), "fenced")

    # -- the loop -----------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        tick = self.ttl / 8
        started = False
        warned_at: float | None = None
        while True:
            try:
                await self.step()
                if warned_at is not None:
                    log.info("publisher group %s: Redis answers again", self.group)
                    warned_at = None
            except RedisUnavailable as exc:
                # once, then once a minute: the loop retries every tick meanwhile (and what
                # it holds lapses after 0.6 x TTL without a renewal)
                now = monotonic()
                if warned_at is None or now - warned_at >= 60.0:
                    log.warning("publisher group %s: %s", self.group, exc)
                    warned_at = now
            if not started:
                task_status.started()
                started = True
            await anyio.sleep(tick)

    async def step(self) -> None:
        """One tick: lapse what was not renewed, renew when due, rebalance."""
        now = monotonic()
        late = {p for p in self.held if now - self._renewed.get(p, 0.0) > 0.6 * self.ttl}
        if late:
            self._lose(late, "lease not renewed in time")
        if now >= self._next_renew and self.held:
            await self._renew()
        beats = await self.read_beats()
        members = live_members(beats, self.group, self.clock.now(), self.ttl, self.instance)
        if members != self.members:
            log.info(
                "group %s members: %s (were %s)",
                self.group,
                ",".join(members),
                ",".join(self.members),
                extra={"event": "group_members", "members": members},
            )
            self.members = members
        self.stats.members = len(self.members)
        wanted = owned_by(self.instance, self.members, self.partitions)
        extra = set(self.held) - wanted
        if extra:
            await self.release(extra, "rebalanced to another member")
        missing = sorted(wanted - set(self.held))
        if missing:
            await self._acquire(missing)

    async def _renew(self) -> None:
        sent = monotonic()
        held = dict(self.held)
        lost = await self.leases.renew(held)
        took = monotonic() - sent
        self.stats.renewed(took)
        for p, epoch in held.items():
            if p not in lost and self.held.get(p) == epoch:
                self._renewed[p] = sent  # the lease runs from no earlier than this
        self._next_renew = sent + self.ttl / 4
        if lost:
            self._lose(lost & set(self.held), "lease taken or expired")

    async def _acquire(self, partitions: list[int]) -> None:
        sent = monotonic()
        got = await self.leases.acquire(partitions)
        gained = {p: e for p, e in got.items() if isinstance(e, int)}
        if not gained:
            return
        for p, epoch in gained.items():
            self.held[p] = epoch
            self._renewed[p] = sent
            self._fenced_logged.discard(p)
        self.stats.takeovers += len(gained)
        log.info(
            "partitions gained: %s (epochs %s); %d owned of %d, %d members",
            _ranges(gained),
            _ranges(gained.values()),
            len(self.held),
            self.partitions,
            len(self.members),
            extra={"event": "partitions_gained", "partitions": sorted(gained)},
        )
        self.runner.take_over()

    def _lose(self, partitions: Iterable[int], why: str) -> None:
        """Stop writing for these partitions and drop their symbols' state."""
        parts = [p for p in partitions if p in self.held]
        if not parts:
            return
        for p in parts:
            del self.held[p]
            self._renewed.pop(p, None)
        self.stats.losses += len(parts)
        dropped = self.runner.rescope()
        log.info(
            "partitions lost (%s): %s; %d symbols dropped, %d partitions owned",
            why,
            _ranges(parts),
            len(dropped),
            len(self.held),
            extra={"event": "partitions_lost", "partitions": sorted(parts), "reason": why},
        )

    async def release(self, partitions: Iterable[int] | None = None, why: str = "stopping") -> None:
        """Give partitions up (all of them by default): state dropped first, then the
        leases deleted, so the next owner can take them at once."""
        parts = list(self.held) if partitions is None else [p for p in partitions if p in self.held]
        held = {p: self.held[p] for p in parts}
        self._lose(parts, why)
        if held:
            await self.leases.release(held)


def _ranges(numbers: Iterable[int]) -> str:
    """1,2,3,7 -> '1-3,7' (short log lines for 64 partitions)."""
    out: list[str] = []
    values = sorted(set(numbers))
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(out)
