"""The live driver: feeds the engine from a change source and an input reader, writes its
outputs through a sink, and keeps time with an injected clock.

Never imports redis: the adapters (`sources`, `publisher`) implement the protocols below,
and tests use in-memory ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import anyio
import msgspec
from anyio.abc import TaskStatus

from harvest_async.backoff import Backoff, Outage
from harvest_async.clock import Clock, monotonic
from harvest_async.core.codec import Hash, SymbolInputs
from harvest_async.core.engine import Engine, Output
from harvest_async.errors import PermissionDenied, RedisUnavailable, WriteRefused, WriteUncertain
from harvest_async.service.logs import DenialLog

__all__ = ["ChangeSource", "Changed", "Gap", "InputReader", "Runner", "Sink"]

log = logging.getLogger(__name__)

# symbols per fetch + evaluate + write round; smaller chunks leave less transient garbage
# after a burst (1,000 kept ~0.6 KiB more RSS per tracked symbol) and shorter EXECs
FETCH_CHUNK = 250
# resyncs that need not re-read the proposal hashes: startup adopts them itself, and the
# timers' reconciles follow no gap
_NO_VERIFY = frozenset({"startup", "periodic reconcile", "poll"})


class Changed(msgspec.Struct, frozen=True, gc=False):
    """An input of `symbol` may have changed ("look again")."""

    symbol: str
    kind: str  # "marketstate" | "risk" | "position" | "stream"


class Gap(msgspec.Struct, frozen=True, gc=False):
    """Notifications may have been lost: resync every symbol before trusting events."""

    reason: str


Event = Changed | Gap


class ChangeSource(Protocol):
    async def run(self, emit: Callable[[Event], None], *, task_status: TaskStatus[None]) -> None:
        """Subscribe, signal readiness with task_status.started(), then emit forever."""
        ...


class InputReader(Protocol):
    async def fetch(self, symbols: Sequence[str]) -> list[SymbolInputs]: ...

    async def discover(self) -> list[str]:
        """Symbols that have a position key (used when SYMBOLS is '*')."""
        ...

    async def read_published(self, symbols: Sequence[str] | None) -> dict[str, Hash]:
        """Existing proposal hashes (all of them when `symbols` is None)."""
        ...


class Sink(Protocol):
    async def write(self, outputs: Sequence[Output]) -> None:
        """Write all outputs atomically. Raise WriteRefused when Redis answered no (it
        says what it applied all the same), WriteUncertain when the outcome is unknown,
        RedisUnavailable when nothing was written."""
        ...

    async def landed(self, outputs: Sequence[Output]) -> bool:
        """Whether a write that raised WriteUncertain was applied (RedisUnavailable while
        that cannot be told)."""
        ...


class RunnerHooks(Protocol):
    def on_event(self, kind: str) -> None: ...
    def on_resync(self, reason: str) -> None: ...
    def on_latency(self, seconds: float) -> None: ...
    def on_cycle(self, tracked: int) -> None: ...


class _NoHooks:
    def on_event(self, kind: str) -> None:
        pass

    def on_resync(self, reason: str) -> None:
        pass

    def on_latency(self, seconds: float) -> None:
        pass

    def on_cycle(self, tracked: int) -> None:
        pass


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
    ) -> None:
        self.engine = engine
        self.reader = reader
        self.sink = sink
        self.clock = clock
        self.symbols = symbols
        self.reconcile_every = reconcile_every
        self.shutdown_grace = shutdown_grace
        self.hooks: RunnerHooks = hooks or _NoHooks()
        self._dirty: dict[str, float] = {}  # symbol -> monotonic time first seen dirty
        self._resync_reason: str | None = None
        self._wake = anyio.Event()
        self._next_reconcile = 0.0
        self.passes = 0  # completed full resyncs (tests and readiness use it)
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

    # -- events --------------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        """Called by the source for every event; O(1), coalesces per symbol."""
        if isinstance(event, Gap):
            if self._resync_reason is None:
                self._resync_reason = event.reason
        else:
            self.hooks.on_event(event.kind)
            if event.symbol not in self._dirty and self.engine.wants(event.symbol):
                self._dirty[event.symbol] = monotonic()
        self._wake.set()

    def request_resync(self, reason: str) -> None:
        self.emit(Gap(reason))

    # -- lifecycle -----------------------------------------------------------------------
    async def startup(self) -> None:
        """The first full pass: adopt existing hashes, compute and publish every symbol."""
        await self._settle_uncertain()
        published = await self.reader.read_published(self.symbols)
        for symbol, fields in published.items():
            self.engine.note_existing(symbol, fields)
        await self._resync("startup")
        self.engine.starting = False

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
            # a Gap emitted while subscribing is covered by the startup resync
            self._resync_reason = None
            await self._with_retry(self.startup)
            task_status.started()
            while True:
                await self._cycle()

    async def _with_retry(self, step: Callable[[], Any]) -> None:
        delay = 0.2
        while True:
            try:
                await step()
                return
            except PermissionDenied:
                raise  # at startup a missing permission is a configuration error (exit 2)
            except RedisUnavailable as exc:
                log.warning("redis unavailable (%s); retrying in %.1f s", exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _cycle(self) -> None:
        deadline = self.engine.next_deadline()
        if self._next_reconcile and (deadline is None or self._next_reconcile < deadline):
            deadline = self._next_reconcile
        if self._retry_at is not None and (deadline is None or self._retry_at < deadline):
            deadline = self._retry_at
        if not self._dirty and self._resync_reason is None:
            await self.clock.wait(self._wake, deadline)
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
            log.warning("redis unavailable during processing (%s); will resync", exc)
            if self._resync_reason is None:
                self._resync_reason = "redis error"
            await anyio.sleep(0.5)
            return
        self._denials.allowed()
        self._denied_delay = 0.5

    async def process(self) -> None:
        """One round: resync if needed, fetch dirty symbols, run due timers, write."""
        await self._settle_uncertain()
        now = self.clock.now()
        if self._resync_reason is None and self._next_reconcile and now >= self._next_reconcile:
            self._resync_reason = "periodic reconcile"
        if self._resync_reason is not None:
            reason = self._resync_reason
            self._resync_reason = None
            try:
                await self._resync(reason)
            except BaseException:
                self._resync_reason = self._resync_reason or reason
                raise
            return
        batch = self._dirty
        if batch:
            self._dirty = {}
            try:
                await self._recompute(list(batch), batch, force=False)
            except BaseException:
                for symbol, seen in batch.items():
                    self._dirty.setdefault(symbol, seen)
                raise
        due = self.engine.due(self.clock.now())
        if due:
            await self._evaluate_and_write(due, {})
        if self._retry_at is not None and self.clock.now() >= self._retry_at:
            await self._retry_refused()

    async def _resync(self, reason: str) -> None:
        self.hooks.on_resync(reason)
        if reason not in ("periodic reconcile", "poll"):
            log.info("resync (%s)", reason)
        if self.symbols is not None:
            symbols = list(self.symbols)
        else:
            found = set(await self.reader.discover())
            symbols = sorted(found | set(self.engine.symbols()))
        if reason not in _NO_VERIFY:
            # after a gap the proposals may be gone too (a server restart loses them while
            # the inputs come back unchanged): check them, or nothing would be republished
            published = await self.reader.read_published(symbols)
            for symbol in symbols:
                self.engine.check_published(symbol, published.get(symbol))
        dirty, self._dirty = self._dirty, {}
        # a symbol notified while this resync awaited may have been created after SCAN
        # passed it: recompute it now, or it would wait for the next reconcile
        symbols.extend(sorted(dirty.keys() - set(symbols)))
        for symbol in symbols:
            dirty.setdefault(symbol, monotonic())
        await self._recompute(symbols, dirty, force=True)
        self.passes += 1
        self._next_reconcile = self.clock.now() + self.reconcile_every

    async def _recompute(self, symbols: list[str], seen: dict[str, float], *, force: bool) -> None:
        for start in range(0, len(symbols), FETCH_CHUNK):
            chunk = symbols[start : start + FETCH_CHUNK]
            inputs = await self.reader.fetch(chunk)
            changed = []
            now = self.clock.now()
            for item in inputs:
                if self.engine.observe(item) or force:
                    changed.append(item.symbol)
                if item.position is None:
                    self.engine.forget_absent(item.symbol, now)
            changed.extend(self.engine.due(self.clock.now()))
            await self._evaluate_and_write(changed, seen)

    async def _evaluate_and_write(self, symbols: list[str], seen: dict[str, float]) -> None:
        now = self.clock.now()
        outputs: list[Output] = []
        for symbol in dict.fromkeys(symbols):
            out = self.engine.evaluate(symbol, now)
            if out is not None:
                outputs.append(out)
            elif self._refused:
                self._refused.discard(symbol)  # nothing (left) to write for it
        self.hooks.on_cycle(len(self.engine))
        while outputs:
            try:
                await self._write(outputs)
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
        if self._retry_at is None and self._refused:
            # the first refusal of an outage, or a retry refused again: back off further
            self._retry_at = self.clock.now() + self._refusals.failed(exc.reply)
        return list(exc.collateral)

    async def _retry_refused(self) -> None:
        """Re-read and re-evaluate the symbols whose write was refused: the latest inputs
        decide what is written now (a publish, a retraction, or nothing any more)."""
        symbols = sorted(self._refused)
        self._retry_at = None
        try:
            await self._recompute(symbols, {}, force=True)
        except BaseException:
            if self._refused and self._retry_at is None:
                self._retry_at = self.clock.now()  # not refused, just interrupted
            raise

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
