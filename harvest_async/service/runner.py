"""The live driver: feeds the rounds (`core.rounds`) from a change source, answers their
requests from an input reader and a sink, and keeps time with an injected clock.

What it adds to the rounds is what only live has: waiting for events and time, writes
that fail (refused, uncertain, or Redis gone) and their retries. Never imports redis: the
adapters in `redis_io` implement the protocols of `core.ports`, tests use in-memory ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from harvest_async.backoff import Backoff, DenialLog, Outage, RedisOutage
from harvest_async.clock import Clock, monotonic
from harvest_async.core.engine import Engine
from harvest_async.core.keys import Keys
from harvest_async.core.ports import (
    ChangeSource,
    Event,
    Gap,
    InputReader,
    Output,
    RunnerHooks,
    Sink,
)
from harvest_async.core.rounds import (
    FETCH_CHUNK,
    Discover,
    Fetch,
    ReadPublished,
    Request,
    Rounds,
    Step,
    Write,
)
from harvest_async.errors import (
    Fenced,
    NodeUnavailable,
    PermissionDenied,
    RedisUnavailable,
    WriteRefused,
    WriteUncertain,
)

__all__ = ["Runner"]

log = logging.getLogger(__name__)


class Runner:
    def __init__(
        self,
        engine: Engine,
        reader: InputReader,
        sink: Sink,
        clock: Clock,
        *,
        symbols: tuple[str, ...] | None,
        reconcile_every: float,
        shutdown_grace: float = 5.0,
        hooks: RunnerHooks | None = None,
        refusal_backoff: Backoff | None = None,
        outage: RedisOutage | None = None,
        on_fenced: Callable[[list[Output], str], None] | None = None,
        gather: float = 0.0,
        keys: Keys | None = None,
    ) -> None:
        """`gather`: while every pending change is of a symbol the floor holds (it can at
        most be deferred), wait up to this many seconds for more before the round, so
        that one round reads many (a change that may publish ends the wait at once).
        `keys`: lets a gap that names cluster slots resync only their symbols."""
        self.engine = engine
        self.reader = reader
        self.sink = sink
        self.clock = clock
        self.shutdown_grace = shutdown_grace
        self.rounds = Rounds(
            engine,
            symbols=symbols,
            reconcile_every=reconcile_every,
            now=clock.now,
            mark=monotonic,
            hooks=hooks,
            round_cap=FETCH_CHUNK,
            keys=keys,
        )
        self.hooks = self.rounds.hooks
        self._wake = anyio.Event()
        self._idle = False  # waiting for an event or a deadline, nothing pending
        self.gather = gather
        self._gathering = False  # only floor-held changes pending: events need not wake
        self.writes = 0
        # writes whose outcome is unknown (WriteUncertain): settled before anything else
        # is written, so one that did land is confirmed instead of written twice
        self._uncertain: list[Sequence[Output]] = []
        # symbols whose write Redis refused: re-read and re-evaluated together at _retry_at
        self._refused: set[str] = set()
        self._retry_at: float | None = None
        self._refusals = Outage("Redis refuses proposal writes", log, clock, refusal_backoff)
        self._denials = DenialLog(log)
        self._denied_delay = 0.5
        # Redis unreachable: one outage shared with the other reconnect loops (logged once),
        # retried with a backoff of our own, cut short when another loop finds Redis back
        self.outage = outage or RedisOutage("redis", log)
        self._backoff = Backoff(first=0.2, cap=10.0)
        self._node_backoff = Backoff(first=0.2, cap=2.0)  # writes to a lost cluster node
        # a publisher group's: outputs the write script fenced off (INTERFACE §6)
        self.on_fenced = on_fenced

    @property
    def passes(self) -> int:
        """Completed full passes (startup, resyncs, reconciles)."""
        return self.rounds.passes

    # -- events --------------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        """Called by the source for every event; O(1), coalesces per symbol."""
        if isinstance(event, Gap):
            self.rounds.gap(event.reason, event.slots, event.detail)
        else:
            self.hooks.on_event(event.kind)
            urgent = self.rounds.changed(event.symbol, monotonic(), event.kind)
            if self._gathering and not urgent:
                return
        self._wake.set()

    def take_over(self) -> None:
        """A publisher group gained partitions: adopt and compute their symbols now."""
        self.rounds.take_over()
        self._wake.set()

    def rescope(self) -> list[str]:
        """A publisher group lost partitions (the engine's `scope` predicate says which
        symbols are still ours): drop the others' state at once; returns them."""
        engine = self.engine
        dropped = engine.scope(engine.owns) if engine.owns is not None else []
        self.rounds.rescope()
        self._refused = {s for s in self._refused if engine.wants(s)}
        return dropped

    # -- lifecycle -----------------------------------------------------------------------
    async def startup(self) -> None:
        """The first full pass: adopt existing hashes, compute and publish every symbol."""
        await self._settle_uncertain()
        await self._drive(self.rounds.startup())

    async def run(
        self,
        source: ChangeSource | None,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Subscribe, resync, then react to events until cancelled."""
        async with anyio.create_task_group() as tg:
            if source is not None:
                await tg.start(source.run, self.emit)
            self.rounds.forget_gap()  # a Gap emitted while subscribing: startup covers it
            await self._with_retry(self.startup)
            task_status.started()
            while True:
                await self._cycle()

    async def wait_idle(self) -> None:
        """Return once the runner waits with nothing to do before its next deadline (for
        tests on a FakeClock: every event and due timer so far has been processed)."""
        while True:
            if self._idle and not self.rounds.pending and not self._wake.is_set():
                wake = self._wake_at()
                if wake is None or wake > self.clock.now():
                    return
            await anyio.lowlevel.checkpoint()

    async def _with_retry(self, step: Callable[[], Any]) -> None:
        while True:
            try:
                await step()
            except PermissionDenied:
                raise  # at startup a missing permission is a configuration error (exit 2)
            except RedisUnavailable as exc:
                await self._redis_failed(exc)
                continue
            self._redis_ok()
            return

    async def _redis_failed(self, exc: RedisUnavailable) -> None:
        """Report to the shared outage and wait for the next attempt: the backoff's delay,
        or less if another loop (a resubscription, a liveness write) finds Redis back."""
        self.outage.failed("processing", str(exc), node=exc.node)
        await self.outage.pause(self._backoff.next_delay())

    def _redis_ok(self) -> None:
        if self._backoff.attempts:
            self._backoff.reset()
            self.outage.recovered("processing")

    def _wake_at(self) -> float | None:
        wake = self.rounds.wake_at()
        retry = self._retry_at
        if retry is not None and (wake is None or retry < wake):
            return retry
        return wake

    async def _cycle(self) -> None:
        if not self.rounds.pending:
            self._idle = True
            try:
                await self.clock.wait(self._wake, self._wake_at())
            finally:
                self._idle = False
        if self.gather > 0 and self.rounds.pending and not self.rounds.urgent:
            await self._gather()
        self._wake = anyio.Event()
        try:
            await self.process()
        except PermissionDenied as exc:
            # the ACL changed under us: what failed stays pending (dirty symbols, the
            # resync, the writes) and is retried with backoff, logged once
            self._denials.denied(exc)
            await anyio.sleep(self._denied_delay)
            self._denied_delay = min(self._denied_delay * 2, 5.0)
            return
        except RedisUnavailable as exc:
            # what was missed meanwhile is recovered by a resync (retried, counted once);
            # a cluster node lost: of the slots it served (the others' listeners stayed),
            # of every symbol for the audit stream's node; said by the outage's line
            if exc.node is not None:
                self.rounds.gap(
                    "node lost", exc.slots if isinstance(exc, NodeUnavailable) else None
                )
            else:
                self.rounds.gap("redis error")
            await self._redis_failed(exc)
            return
        self._redis_ok()
        self._denials.allowed()
        self._denied_delay = 0.5

    async def _gather(self) -> None:
        """Only floor-held changes are pending: gather more of them into this round (at
        most `gather` s; no timer comes due meanwhile, and an urgent change ends it)."""
        self._wake = anyio.Event()
        deadline = self.clock.now() + self.gather
        wake = self._wake_at()
        self._gathering = True
        try:
            await self.clock.wait(self._wake, deadline if wake is None else min(wake, deadline))
        finally:
            self._gathering = False

    async def process(self) -> None:
        """One round (a resync, the dirty symbols, the due timers), then the refused
        symbols' retry when it is due."""
        await self._settle_uncertain()
        await self._drive(self.rounds.round())
        if self._retry_at is not None and self.clock.now() >= self._retry_at:
            await self._retry_refused()

    # -- answering the rounds' requests ---------------------------------------------------
    async def _drive(self, step: Step) -> None:
        answer: Any = None
        failure: BaseException | None = None
        while True:
            try:
                request = step.send(answer) if failure is None else step.throw(failure)
            except StopIteration:
                return
            answer = failure = None
            try:
                answer = await self._answer(request)
            except RedisUnavailable as exc:
                failure = exc  # the round restores what it was doing, then re-raises

    async def _answer(self, request: Request) -> Any:
        if type(request) is Fetch:
            return await self.reader.fetch(request.symbols, request.kinds)
        if type(request) is Write:
            await self._write_all(request.outputs, request.seen)
            return None
        if type(request) is Discover:
            return await self.reader.discover()
        assert type(request) is ReadPublished
        return await self.reader.read_published(request.symbols)

    async def _write_all(self, outputs: list[Output], seen: dict[str, float]) -> None:
        if self.on_fenced is not None:
            # a publisher group's partition given up while this round ran: not ours to write
            wants = self.engine.wants
            outputs = [o for o in outputs if wants(o.symbol)]
        while outputs:
            try:
                await self._write(outputs)
            except Fenced as exc:
                if self.on_fenced is None:
                    outputs = self._on_refused(outputs, exc)
                    continue
                # another member owns their partition now: not retried, given up
                self.engine.confirm(exc.landed)
                landed = {id(o) for o in exc.landed}
                self.on_fenced([o for o in outputs if id(o) not in landed], exc.reply)
                self._written(list(exc.landed), seen)
                return
            except WriteRefused as exc:
                # Redis is up and said no: not a gap, no resync; the refused symbols are
                # retried with backoff, the bystanders of an aborted transaction at once
                outputs = self._on_refused(outputs, exc)
                continue
            self._written(outputs, seen)
            return

    async def _write(self, outputs: list[Output]) -> None:
        try:
            # finish an in-flight transaction even while shutting down (bounded by the grace)
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(self.shutdown_grace) as limit:
                    await self.sink.write(outputs)
                    self.engine.confirm(outputs)
                    self.writes += 1
            if limit.cancelled_caught:
                raise WriteUncertain(f"write did not finish within {self.shutdown_grace:g} s")
        except WriteRefused:
            raise  # Redis is up: the caller backs off, no retry timer, no resync
        except RedisUnavailable as exc:
            if isinstance(exc, WriteUncertain):
                self._uncertain.append(outputs)  # settled before anything else is written
            self.engine.retry_later([o.symbol for o in outputs], self.clock.now() + 0.5)
            raise

    def _written(self, outputs: list[Output], seen: dict[str, float]) -> None:
        if self._refusals.active:
            self._refused.difference_update(o.symbol for o in outputs)
            if not self._refused:
                self._retry_at = None
                self._refusals.recovered()
        done = monotonic()
        for out in outputs:
            first = seen.get(out.symbol)
            if first is not None:
                self.hooks.on_latency(done - first)

    def _on_refused(self, outputs: list[Output], exc: WriteRefused) -> list[Output]:
        """Record a refused write; return the outputs to write again at once (those that
        only shared an aborted transaction with a refused one)."""
        self.engine.confirm(exc.landed)
        self.engine.unsure(o.symbol for o in exc.touched)
        settled = {o.symbol for o in (*exc.landed, *exc.collateral)}  # one output each
        self._refused.update(o.symbol for o in outputs if o.symbol not in settled)
        if self._retry_at is None and self._refused and exc.unreachable is not None:
            # a cluster node lost, not a refusal: said by the outage (once per node), and
            # retried soon (its replica is promoted within seconds)
            self.outage.failed("writes", exc.reply, node=exc.unreachable)
            self._retry_at = self.clock.now() + self._node_backoff.next_delay()
        elif self._retry_at is None and self._refused:
            # the first refusal of an outage, or a retry refused again: back off further
            self._retry_at = self.clock.now() + self._refusals.failed(exc.reply)
        return list(exc.collateral)

    async def _retry_refused(self) -> None:
        """Re-read and re-evaluate the symbols whose write was refused: the latest inputs
        decide what is written now (a publish, a retraction, or nothing any more)."""
        symbols = sorted(self._refused)
        self._refused.clear()  # refused again: back in through _on_refused
        self._retry_at = None
        try:
            await self._drive(self.rounds.recompute(symbols, {}, force=True))
        except BaseException:
            self._refused.update(symbols)  # not refused, just interrupted: keep them
            if self._retry_at is None:
                self._retry_at = self.clock.now()
            raise
        if not self._refused:
            self._node_backoff.reset()
            if self._refusals.active:
                self._refusals.recovered()

    async def _settle_uncertain(self) -> None:
        """Before anything is written again: did the writes whose outcome was unknown land?
        One that did is confirmed (its audit entry is never appended twice); one that did
        not is left to the re-evaluation already scheduled."""
        while self._uncertain:
            outputs = self._uncertain[0]
            if await self.sink.landed(outputs):
                log.info(
                    "a write whose outcome was unknown landed (%s); confirmed, not rewritten",
                    _describe(outputs),
                )
                self.engine.confirm(outputs)
            else:
                log.info("a write whose outcome was unknown did not land (%s)", _describe(outputs))
            del self._uncertain[0]


def _describe(outputs: Sequence[Output]) -> str:
    last = outputs[-1]
    more = f" and {len(outputs) - 1} more" if len(outputs) > 1 else ""
    return f"{last.symbol} seq={last.seq}{more}"
