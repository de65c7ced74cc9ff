"""Replay a recording through the live engine on a virtual clock, or into a Redis.

Offline (`replay`): the very `Engine` that runs live (same codec, gate and kernel, built
from the same Settings by `service.engine_config`), driven the way `runner.Runner`
drives it, with three things swapped:

* source: the recording's lines, applied in order to an in-memory store of the input
  hashes (trimmed to the fields the service reads, exactly like the live reader);
* clock: virtual time that jumps from one recorded timestamp to the next and stops at
  every engine deadline in between, so floor trailing edges, heartbeats, staleness and
  the periodic reconcile happen at their virtual times;
* sink: a callback that receives every publish/retract (the CLI writes them as the
  audit stream would carry them).

What mirrors the runner: a startup pass over every symbol (`engine.starting` = True,
then False); changes with the same timestamp form one round (one fetch live: the
recorder stamps one fetch's results with one time), observed once per symbol and
evaluated together with the deadlines that are due; a snapshot line (a recorded gap) is a
full resync; every `MAX_PUBLISH_AGE_SEC` a full reconcile, as the live runner does.

Deterministic: no wall clock, no randomness, no set iteration order in the outputs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from harvest_async.config import Settings
from harvest_async.core.codec import Hash, SymbolInputs, trim
from harvest_async.core.engine import Engine, EngineConfig, Output, PublishOut, RetractOut
from harvest_async.replay.format import Delete, End, RecordingError, Set, Snapshot, SymbolState
from harvest_async.replay.recording_reader import RecordingReader
from harvest_async.service.app import engine_config
from harvest_async.service.runner import FETCH_CHUNK  # a resync observes and evaluates per chunk

__all__ = ["RecordingError", "ReplayStats", "engine_config_for", "replay"]

log = logging.getLogger(__name__)

_KIND_INDEX = {"marketstate": 0, "risk": 1, "position": 2}
_INF = math.inf


@dataclass(slots=True)
class ReplayStats:
    start: float = 0.0
    end: float = 0.0
    changes: int = 0
    snapshots: int = 0
    rounds: int = 0
    publishes: int = 0
    retracts: int = 0
    invalid: int = 0
    symbols: int = 0
    complete: bool = False  # the recording had its end marker
    end_reason: str = ""

    @property
    def outputs(self) -> int:
        return self.publishes + self.retracts


class _CountingObserver:
    def __init__(self, stats: ReplayStats) -> None:
        self.stats = stats

    def on_publish(self, out: PublishOut) -> None:
        pass

    def on_retract(self, out: RetractOut) -> None:
        pass

    def on_invalid(self, symbol: str, reason: str) -> None:
        self.stats.invalid += 1

    def on_compute(self, seconds: float) -> None:
        pass


@contextlib.contextmanager
def _quiet_engine_log() -> Iterator[None]:
    """The engine logs one INFO line per publish: right for a service, noise for a replay
    of a million changes. Keep its warnings; show the rest only at DEBUG."""
    engine_log = logging.getLogger("harvest_async.core.engine")
    before = engine_log.level
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        engine_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        engine_log.setLevel(before)


def engine_config_for(settings: Settings) -> EngineConfig:
    """The live service's engine configuration for these Settings (one code path)."""
    return engine_config(settings)


class _Replayer:
    """One replay: the store, the engine and virtual time. `run()` drives it."""

    def __init__(
        self,
        reader: RecordingReader,
        config: EngineConfig,
        emit: Callable[[list[Output]], None],
        *,
        reconcile_every: float,
        progress: Callable[[float, ReplayStats], None] | None,
    ) -> None:
        self.reader = reader
        self.config = config
        self.stats = ReplayStats()
        self.engine = Engine(config, _CountingObserver(self.stats))
        self.emit = emit
        self.reconcile_every = reconcile_every
        self.next_reconcile = _INF
        self.progress = progress
        # the live reader's trim: a rewrite of an ignored field is "no change" here too
        self.trim = trim
        self.allowed = frozenset(config.symbols) if config.symbols is not None else None
        # symbol -> [marketstate, risk, position], trimmed as the live reader returns them
        self.store: dict[str, list[Hash | None]] = {}
        self.seen: set[str] = set()  # every symbol that had an input (for the summary)

    # -- store -------------------------------------------------------------------------
    def _load(self, state: dict[str, SymbolState]) -> None:
        trim = self.trim
        allowed = self.allowed
        store: dict[str, list[Hash | None]] = {}
        for symbol in sorted(state):
            if allowed is not None and symbol not in allowed:
                continue
            hashes = state[symbol]
            row: list[Hash | None] = [
                trim(kind, fields) if (fields := hashes.get(kind)) else None
                for kind in ("marketstate", "risk", "position")
            ]
            if row != [None, None, None]:
                store[symbol] = row
        self.seen.update(self.store)
        self.store = store

    def _inputs(self, symbol: str) -> SymbolInputs:
        row = self.store.get(symbol)
        if row is None:
            return SymbolInputs(symbol)
        return SymbolInputs(symbol, row[0], row[1], row[2])

    # -- engine rounds (what Runner._recompute / _resync / process do) ------------------
    def _evaluate(self, symbols: list[str], now: float) -> None:
        engine = self.engine
        outputs: list[Output] = []
        for symbol in dict.fromkeys(symbols) if len(symbols) > 1 else symbols:
            out = engine.evaluate(symbol, now)
            if out is not None:
                outputs.append(out)
        if outputs:
            engine.confirm(outputs)
            for out in outputs:
                if type(out) is PublishOut:
                    self.stats.publishes += 1
                else:
                    self.stats.retracts += 1
            self.emit(outputs)

    def _resync(self, now: float) -> None:
        engine = self.engine
        if self.allowed is not None:
            assert self.config.symbols is not None
            symbols = list(self.config.symbols)
        else:
            with_position = {s for s, row in self.store.items() if row[2] is not None}
            symbols = sorted(with_position | set(engine.symbols()))
        for start in range(0, len(symbols), FETCH_CHUNK):
            changed: list[str] = []
            for symbol in symbols[start : start + FETCH_CHUNK]:
                inputs = self._inputs(symbol)
                engine.observe(inputs)
                changed.append(symbol)
                if inputs.position is None:
                    engine.forget_absent(symbol, now)
            changed.extend(engine.due(now))
            self._evaluate(changed, now)
        self.next_reconcile = now + self.reconcile_every
        self.stats.rounds += 1

    def _round(self, pending: dict[str, None], now: float) -> None:
        """Changes seen together (one live fetch): observe each symbol once, evaluate the
        changed ones with the due deadlines, then the deadlines due after that."""
        if self.next_reconcile <= now:
            pending.clear()  # a reconcile observes every symbol anyway
            self._resync(now)
            return
        engine = self.engine
        store = self.store
        changed: list[str] = []
        for symbol in pending:
            row = store.get(symbol)
            inputs = (
                SymbolInputs(symbol, row[0], row[1], row[2])
                if row is not None
                else SymbolInputs(symbol)
            )
            if engine.observe(inputs):
                changed.append(symbol)
            if inputs.position is None:
                engine.forget_absent(symbol, now)
        pending.clear()
        due = engine.due(now)
        if due:
            changed.extend(due)
        if changed:
            self._evaluate(changed, now)
        due = engine.due(now)
        if due:
            self._evaluate(due, now)
        self.stats.rounds += 1

    def _advance(self, limit: float, *, inclusive: bool) -> None:
        """Fire every deadline (and reconcile) before `limit` (or at it), in time order."""
        engine = self.engine
        while True:
            deadline = engine.next_deadline()
            reconcile = self.next_reconcile
            if deadline is None or reconcile <= deadline:
                at, is_reconcile = reconcile, True  # the runner checks the reconcile first
            else:
                at, is_reconcile = deadline, False
            if at > limit or (at == limit and not inclusive):
                return
            if is_reconcile:
                self._resync(at)
            else:
                due = engine.due(at)
                if due:
                    self._evaluate(due, at)

    # -- main loop ---------------------------------------------------------------------
    def run(self) -> ReplayStats:
        reader = self.reader
        header = reader.header
        stats = self.stats
        stats.start = header.start
        engine = self.engine
        self._load(header.snapshot)
        engine.starting = True
        self._resync(header.start)
        engine.starting = False

        store = self.store
        trim = self.trim
        allowed = self.allowed
        kind_index = _KIND_INDEX
        pending: dict[str, None] = {}
        group_at = header.start
        end_at: float | None = None
        changes = 0
        progress = self.progress
        for batch in reader.batches():
            for line in batch:
                at = line.at
                if at != group_at:
                    if pending:
                        self._round(pending, group_at)
                    deadline = engine.next_deadline()
                    if (deadline is not None and deadline < at) or self.next_reconcile < at:
                        self._advance(at, inclusive=False)
                    group_at = at
                cls = type(line)
                if cls is Set:
                    symbol = line.symbol  # type: ignore[union-attr]
                    if allowed is not None and symbol not in allowed:
                        continue
                    row = store.get(symbol)
                    if row is None:
                        row = store[symbol] = [None, None, None]
                    kind = line.kind  # type: ignore[union-attr]
                    row[kind_index[kind]] = trim(kind, line.fields)  # type: ignore[union-attr]
                    pending[symbol] = None
                    changes += 1
                elif cls is Delete:
                    symbol = line.symbol  # type: ignore[union-attr]
                    if allowed is not None and symbol not in allowed:
                        continue
                    row = store.get(symbol)
                    if row is not None:
                        row[kind_index[line.kind]] = None  # type: ignore[union-attr]
                        if row[0] is None and row[1] is None and row[2] is None:
                            del store[symbol]
                            self.seen.add(symbol)
                    pending[symbol] = None
                    changes += 1
                elif cls is Snapshot:
                    if pending:
                        self._round(pending, at)
                    self._load(line.state)  # type: ignore[union-attr]
                    store = self.store
                    stats.snapshots += 1
                    self._resync(at)
                else:
                    assert cls is End
                    end_at = at
                    stats.end_reason = line.reason  # type: ignore[union-attr]
            stats.changes = changes
            if progress is not None:
                progress(reader.progress(), stats)
        if pending:
            self._round(pending, group_at)
        stats.changes = changes
        stats.complete = end_at is not None
        stats.end = end_at if end_at is not None else reader.last_at
        self._advance(stats.end, inclusive=True)
        stats.symbols = len(self.seen | set(store))
        return stats


def replay(
    path: str | os.PathLike[str],
    config: EngineConfig,
    emit: Callable[[list[Output]], None],
    *,
    reconcile_every: float | None = None,
    progress: Callable[[float, ReplayStats], None] | None = None,
) -> ReplayStats:
    """Run the recording at `path` through a fresh engine; every round's outputs go to
    `emit` in order. Raises RecordingError (with the line) on a bad file.

    `reconcile_every` defaults to the heartbeat, like the live service's reconcile.
    """
    every = config.gate.heartbeat_sec if reconcile_every is None else reconcile_every
    with RecordingReader(path) as reader, _quiet_engine_log():
        return _Replayer(reader, config, emit, reconcile_every=every, progress=progress).run()
