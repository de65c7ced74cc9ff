"""The rounds: turning "these symbols changed / these timers are due / resync now" into
engine calls and outputs. Written once; the live runner and the replayer both drive it, so
replay decides exactly as live does (docs/publish-rules.md, "Resync").

Sans-I/O: a round is a generator that yields requests (`Discover`, `ReadPublished`,
`Fetch`, `Write`: `core.round_requests`, re-exported here) and receives their answers.
The live runner answers them from Redis (and throws a failed write back in); the replayer
answers them from a recording's in-memory state on a virtual clock. Neither decides
anything itself.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator

from harvest_async.core.engine import Engine
from harvest_async.core.input_hashes import Hash, SymbolInputs
from harvest_async.core.keys import Keys
from harvest_async.core.ports import NullHooks, Output, RunnerHooks
from harvest_async.core.round_requests import (
    ALL_KINDS,
    KIND_BITS,
    Discover,
    Fetch,
    ReadPublished,
    Request,
    Step,
    Write,
    merge_partial,
)
from harvest_async.core.slots import touches

__all__ = [
    "ALL_KINDS",
    "FETCH_CHUNK",
    "KIND_BITS",
    "Discover",
    "Fetch",
    "ReadPublished",
    "Request",
    "Rounds",
    "Step",
    "Write",
]

log = logging.getLogger(__name__)

# symbols per fetch + evaluate + write; smaller chunks leave less transient garbage after a
# burst (1,000 kept ~0.6 KiB more RSS per tracked symbol) and shorter transactions
FETCH_CHUNK = 250
# resyncs that need not re-read the proposal hashes: startup adopts them itself, and the
# timers' reconciles follow no gap
_NO_VERIFY = frozenset({"startup", "periodic reconcile", "poll"})
# and those of a cluster node's loss or new primary: said by the outage's and topology's lines
_QUIET = frozenset({"periodic reconcile", "poll", "node lost", "listening to a new primary"})


class _Pending:
    """A resync to do: why, of which cluster slots' symbols (None: of every symbol), and
    what happened (for its log line). Gaps met before it runs widen it."""

    __slots__ = ("detail", "logged", "reason", "slots")

    def __init__(self, reason: str, slots: frozenset[int] | None = None, detail: str = "") -> None:
        self.reason, self.slots, self.detail = reason, slots, detail
        self.logged = False  # its line is written once, by the attempt that gets that far

    def widen(self, other: _Pending) -> None:
        slots = other.slots
        self.slots = None if slots is None or self.slots is None else self.slots | slots
        if other.detail and other.detail != self.detail:  # its words, the widened count
            self.reason, self.detail, self.logged = other.reason, other.detail, False


class Rounds:
    """Dirty symbols, pending resyncs and the reconcile schedule of one engine."""

    def __init__(
        self,
        engine: Engine,
        *,
        symbols: tuple[str, ...] | None,
        reconcile_every: float,
        now: Callable[[], float],
        mark: Callable[[], float] | None = None,
        hooks: RunnerHooks | None = None,
        chunk: int = FETCH_CHUNK,
        round_cap: int | None = None,
        keys: Keys | None = None,
    ) -> None:
        """`round_cap`: at most this many dirty symbols per round (those that may publish
        first; the rest stay dirty for the next round, so a change that can publish does
        not wait behind a backlog of floor-held ones). None: all of them (the replay: one
        round per recorded instant). `keys`: where a symbol's keys are, to scope a gap
        that names cluster slots (None: every gap resyncs every symbol)."""
        self.engine = engine
        self.symbols = symbols  # None: every symbol that shows up (SYMBOLS='*')
        self.reconcile_every = reconcile_every
        self.now = now  # the engine's time (wall clock live, virtual in replay)
        self.mark = mark or now  # the clock of the `seen` marks (latency; monotonic live)
        self.hooks: RunnerHooks = hooks or NullHooks()
        self.chunk = chunk
        self.round_cap = round_cap
        self.keys = keys
        self._dirty: dict[str, float] = {}  # symbol -> when first seen dirty (monotonic)
        self._kinds: dict[str, int] = {}  # dirty symbol -> KIND_BITS of its changed hashes
        self._partial = False  # some dirty symbol needs only some of its hashes read
        self._urgent = False  # a dirty symbol may publish (the floor does not hold it)
        self._pending: _Pending | None = None  # the resync the next round does
        self._resync_retry = False  # the pending resync failed once: retried, not counted
        self._startup = _Pending("startup")  # the same one through the startup's retries
        self.next_reconcile: float | None = None  # set by the first full pass
        self.passes = 0  # completed full passes (startup, resyncs, reconciles)
        self._takeover = False  # a publisher group's partitions gained, to adopt

    # -- events ------------------------------------------------------------------------
    def changed(self, symbol: str, seen: float, kind: str | None = None) -> bool:
        """An input of `symbol` may have changed (coalesced: O(1), one entry per symbol).
        `kind`: the input hash that changed (None, or a kind that names none: all).
        Returns whether the change may publish now (the floor does not hold the symbol)."""
        bits = KIND_BITS.get(kind, ALL_KINDS) if kind is not None else ALL_KINDS
        kinds = self._kinds
        if symbol in kinds:
            kinds[symbol] |= bits
        elif self.engine.wants(symbol):
            self._dirty[symbol] = seen
            kinds[symbol] = bits
            if bits != ALL_KINDS:
                self._partial = True
        else:
            return False
        if self._urgent or not self.engine.held(symbol, self.now()):
            self._urgent = True
            return True
        return False

    def gap(self, reason: str, slots: frozenset[int] | None = None, detail: str = "") -> None:
        """Changes may have been missed: the next round resyncs every symbol, or with
        `slots` those with a key in one of them (`core.slots.touches`)."""
        if self.keys is None:
            slots = None
        if self._pending is None:
            self._pending = _Pending(reason, slots, detail)
        else:
            self._pending.widen(_Pending(reason, slots, detail))

    def take_over(self) -> None:
        """Partitions were gained (a publisher group): the next round adopts the
        proposals of the symbols now ours and computes them (`_take_over`)."""
        self._takeover = True

    def rescope(self) -> None:
        """The engine's share shrank: forget the dirty marks of symbols no longer ours."""
        wants = self.engine.wants
        self._dirty = {s: seen for s, seen in self._dirty.items() if wants(s)}
        self._kinds = {s: bits for s, bits in self._kinds.items() if s in self._dirty}

    def forget_gap(self) -> None:
        """A gap the coming full pass covers anyway (e.g. the startup's)."""
        self._pending = None

    @property
    def urgent(self) -> bool:
        """Pending work that may publish: a resync, or a dirty symbol the floor does not
        hold. Without it, waiting a few ms for more changes changes no output (`Runner`)."""
        return self._urgent or self._pending is not None

    @property
    def pending(self) -> bool:
        """Work that does not wait for a time: dirty symbols or a resync."""
        return bool(self._dirty) or self._pending is not None or self._takeover

    def wake_at(self) -> float | None:
        """When the next round is due without new events (a timer or the reconcile)."""
        deadline = self.engine.next_deadline()
        reconcile = self.next_reconcile
        if reconcile is not None and (deadline is None or reconcile < deadline):
            return reconcile
        return deadline

    # -- rounds ------------------------------------------------------------------------
    def startup(self) -> Step:
        """The first full pass: adopt the proposals in place, compute every symbol."""
        published: dict[str, Hash] = yield ReadPublished(
            None if self.symbols is None else list(self.symbols)
        )
        for symbol, fields in published.items():
            self.engine.note_existing(symbol, fields)
        try:
            yield from self._resync(self._startup)
        except BaseException:
            self._resync_retry = True
            raise
        self._resync_retry = False
        self.engine.starting = False

    def round(self) -> Step:
        """One round: a resync if one is pending or the reconcile is due, else the dirty
        symbols; then the timers that are due (`recompute`)."""
        if self._takeover:
            # before a resync: the resync would replace the predecessor's proposals
            # (not ours) where adopting them keeps them (no publish storm)
            self._takeover = False
            try:
                yield from self._take_over()
            except BaseException:
                self._takeover = True
                raise
            return
        pending = self._pending
        reconcile = self.next_reconcile
        if pending is None and reconcile is not None and self.now() >= reconcile:
            pending = _Pending("periodic reconcile")
        if pending is not None:
            self._pending = None
            try:
                yield from self._resync(pending)
            except BaseException:
                self._restore(pending)
                self._resync_retry = True
                raise
            self._resync_retry = False
            return
        batch = self._dirty
        if batch:
            cap = self.round_cap
            urgent, self._urgent = self._urgent, False  # unless _take leaves some
            if cap is not None and (len(batch) > cap or (urgent and len(batch) > 1)):
                batch, kinds = self._take(cap)
            else:
                kinds = self._kinds
                self._dirty, self._kinds = {}, {}
            partial, self._partial = self._partial, bool(self._dirty) and self._partial
            try:
                yield from self.recompute(
                    list(batch), batch, force=False, kinds=kinds if partial else None
                )
            except BaseException:
                for symbol, seen in batch.items():
                    self._dirty.setdefault(symbol, seen)
                    self._kinds[symbol] = ALL_KINDS  # what was read is unknown: all again
                self._urgent = True
                raise
            return
        yield from self._due()

    def _restore(self, pending: _Pending) -> None:
        """A resync that failed is pending again, widened by any gap met meanwhile."""
        if self._pending is not None:
            pending.widen(self._pending)
        self._pending = pending

    def _take(self, cap: int) -> tuple[dict[str, float], dict[str, int]]:
        """Dirty symbols out of the backlog: those the floor does not hold (a change of
        theirs may publish) alone, at most `cap`, in a round of their own that no backlog
        of deferrable changes makes longer; else the `cap` longest waiting. When the floor
        holds none of them (floor 0), all of them, as before: one round, read and written
        `chunk` symbols at a time."""
        engine = self.engine
        now = self.now()
        dirty, kinds = self._dirty, self._kinds
        free = [symbol for symbol in dirty if not engine.held(symbol, now)]
        if len(free) == len(dirty):  # nothing held (floor 0): all, chunked as a resync is
            self._dirty, self._kinds = {}, {}
            return dirty, kinds
        self._urgent = len(free) > cap
        taken = free[:cap] if free else list(itertools.islice(dirty, cap))
        batch = {symbol: dirty.pop(symbol) for symbol in taken}
        return batch, {symbol: kinds.pop(symbol) for symbol in batch}

    def _resync(self, pending: _Pending) -> Step:
        """Every symbol read and evaluated (a full pass); with `pending.slots` only those
        with a key there, and those dirty anyway (not a full pass: the reconcile keeps its
        schedule)."""
        reason, slots = pending.reason, pending.slots
        if self._resync_retry:  # the same resync again, after a failure: counted once
            log.debug("resync (%s) retried", reason)
        else:
            self.hooks.on_resync(reason)
        if self.symbols is not None:
            symbols = list(self.symbols)
        else:
            found: list[str] = yield Discover()
            if self.engine.scoped:
                found = [s for s in found if self.engine.wants(s)]
            # symbols notified while discovery ran (created after the scan passed their
            # slot) are in _dirty: include them, or they would wait for the next reconcile
            symbols = sorted(set(found) | set(self.engine.symbols()) | self._dirty.keys())
        total = len(symbols)
        if slots is not None and self.keys is not None:
            # a symbol with no key in `slots` lost no notification: its listener stayed
            keys, dirty = self.keys, self._dirty
            symbols = [s for s in symbols if s in dirty or touches(keys, s, slots)]
        if not pending.logged and reason not in _QUIET:
            pending.logged = True
            _log_resync(pending, len(symbols), total)
        lost: list[str] = []
        if reason not in _NO_VERIFY:
            # after a gap the proposals may be gone too (a server restart loses them while
            # the inputs come back unchanged): check them, or nothing would be republished
            published: dict[str, Hash] = yield ReadPublished(symbols)
            check = self.engine.check_published
            lost = [symbol for symbol in symbols if check(symbol, published.get(symbol))]
        seen, self._dirty, self._kinds = self._dirty, {}, {}
        self._partial = self._urgent = False
        mark = self.mark()
        for symbol in symbols:
            seen.setdefault(symbol, mark)
        yield from self.recompute(symbols, seen, force=True)
        if lost:
            self._report_lost(reason, lost)
        if slots is None:
            self.passes += 1
            self.next_reconcile = self.now() + self.reconcile_every

    def _report_lost(self, reason: str, lost: list[str]) -> None:
        """One line for the proposals a resync found gone or replaced: how many it wrote
        again, and why the others were not (their inputs are gone too, e.g. a server
        that restarted empty: they come back when the producers write the inputs)."""
        rewritten = sum(1 for symbol in lost if self.engine.published(symbol) is not None)
        waiting = len(lost) - rewritten
        log.info(
            "resync (%s): %d proposals in Redis were not the last ones written (lost with "
            "the server's data, deleted or replaced): %d written again%s",
            reason,
            len(lost),
            rewritten,
            f"; {waiting} not: their inputs are absent or invalid now, they are written "
            "again when their inputs are"
            if waiting
            else "",
            extra={"event": "proposals_lost", "lost": len(lost), "rewritten": rewritten},
        )

    def _take_over(self) -> Step:
        """Like a startup for the symbols that became ours: their proposals in Redis are
        adopted where they still match (as a restart does), `seq` continues above
        theirs, and a proposal whose position is gone is retracted."""
        engine = self.engine
        if self.symbols is not None:
            found = list(self.symbols)
        else:
            found = yield Discover()
        known = set(engine.symbols())
        new = [s for s in found if s not in known and engine.wants(s)]
        listed = set(new)
        new.extend(s for s in self._dirty if s not in known and s not in listed)
        if not new:
            return
        published: dict[str, Hash] = yield ReadPublished(new)
        for symbol, fields in published.items():
            engine.note_existing(symbol, fields)
        mark = self.mark()
        seen = {s: self._dirty.pop(s, mark) for s in new}
        for symbol in new:
            self._kinds.pop(symbol, None)  # read whole below
        log.info("taking over %d symbols (%d proposals in place)", len(new), len(published))
        yield from self.recompute(new, seen, force=True)

    def recompute(
        self,
        symbols: list[str],
        seen: dict[str, float],
        *,
        force: bool,
        kinds: dict[str, int] | None = None,
    ) -> Step:
        """Read `symbols` chunk by chunk; evaluate those whose inputs changed (all of them
        with `force`), and write. Then the timers due by now: after every chunk is read,
        so a due symbol is evaluated with its latest inputs (and each symbol's result does
        not depend on where the chunks happen to split the list).

        `kinds`: per symbol, the hashes notified as changed; of a symbol the engine holds
        only those are read, the others are kept (None: read all, as a resync does)."""
        engine = self.engine
        for chunk in self._chunks(symbols):
            if kinds is None:
                inputs: list[SymbolInputs] = yield Fetch(chunk)
            else:
                held = [engine.inputs(symbol) for symbol in chunk]
                masks = [
                    ALL_KINDS if old is None else kinds.get(symbol, ALL_KINDS)
                    for symbol, old in zip(chunk, held, strict=True)
                ]
                inputs = yield Fetch(chunk, masks)
                inputs = [
                    merge_partial(old, new, mask)
                    for old, new, mask in zip(held, inputs, masks, strict=True)
                ]
            changed = []
            now = self.now()
            for item in inputs:
                if engine.observe(item) or force:
                    changed.append(item.symbol)
                if item.position is None:
                    engine.forget_absent(item.symbol, now)
            yield from self._evaluate(changed, seen)
        yield from self._due()

    def _due(self) -> Step:
        """The symbols whose timer has come; at most `round_cap` (the rest are due again
        at once, for the next rounds: a burst of trailing edges does not hold up a change
        that may publish for longer than one round)."""
        now = self.now()
        due = self.engine.due(now)
        cap = self.round_cap
        if cap is not None and len(due) > cap:
            self.engine.retry_later(due[cap:], now)
            due = due[:cap]
        if due:
            yield from self._evaluate(due, {})

    def _chunks(self, symbols: list[str]) -> Iterator[list[str]]:
        size = self.chunk
        if len(symbols) <= size:
            yield symbols
            return
        for start in range(0, len(symbols), size):
            yield symbols[start : start + size]

    def _evaluate(self, symbols: list[str], seen: dict[str, float]) -> Step:
        engine = self.engine
        now = self.now()
        outputs: list[Output] = []
        for symbol in dict.fromkeys(symbols) if len(symbols) > 1 else symbols:
            out = engine.evaluate(symbol, now)
            if out is not None:
                outputs.append(out)
        self.hooks.on_cycle(len(engine))
        if outputs:
            yield Write(outputs, seen)


def _log_resync(pending: _Pending, count: int, total: int) -> None:
    """One line per resync; a gap that says what happened (e.g. a cluster's topology
    change) says it with the count of symbols it resyncs."""
    reason, detail = pending.reason, pending.detail
    extra = {"event": "resync", "reason": reason, "resynced": count, "symbols": total}
    if detail:
        log.info("%s: %s; resyncing %d of %d symbols", reason, detail, count, total, extra=extra)
    elif pending.slots is not None:
        log.info("resync (%s): %d of %d symbols", reason, count, total, extra=extra)
    else:
        log.info("resync (%s)", reason, extra=extra)
