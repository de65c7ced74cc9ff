"""Replay a recording through the live engine on a virtual clock, or into a Redis.

Offline (`replay`): the very `Engine` that runs live (same input parsing, gate and kernel, built
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
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from harvest_async.core.engine import Engine, EngineConfig
from harvest_async.core.input_hashes import Hash, SymbolInputs, trim
from harvest_async.core.partition import partition_of
from harvest_async.core.ports import NullHooks, Output, PublishOut
from harvest_async.core.rounds import Discover, Fetch, ReadPublished, Request, Rounds, Step, Write
from harvest_async.replay.format import Delete, End, RecordingError, Set, Snapshot, SymbolState
from harvest_async.replay.recording_reader import RecordingReader

__all__ = ["RecordingError", "ReplayStats", "replay"]

log = logging.getLogger(__name__)

_KIND_INDEX = {"marketstate": 0, "risk": 1, "position": 2}


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


class _CountingObserver(NullHooks):
    def __init__(self, stats: ReplayStats) -> None:
        self.stats = stats

    def on_invalid(self, symbol: str, reason: str) -> None:
        self.stats.invalid += 1


@contextlib.contextmanager
def _quiet_engine_log() -> Iterator[None]:
    """The engine logs a line per change of a symbol's state (and the rounds one per
    resync): right for a service, noise for a replay of a million changes. Keep their
    warnings; show the rest only at DEBUG."""
    loggers = [
        logging.getLogger(n) for n in ("harvest_async.core.engine", "harvest_async.core.rounds")
    ]
    before = [lg.level for lg in loggers]
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        for lg in loggers:
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, before, strict=True):
            lg.setLevel(level)


class _Replayer:
    """One replay: the recorded input state, the engine, its rounds and virtual time.

    It answers the rounds' requests as the live runner does, from memory: `Fetch` from
    the input state as the recording left it at the current virtual time, `Discover` the
    symbols with a position or a proposal, `ReadPublished` what this replay has written,
    `Write` by confirming to the engine and handing the outputs to `emit`.
    """

    def __init__(
        self,
        reader: RecordingReader,
        config: EngineConfig,
        emit: Callable[[list[Output]], None],
        *,
        reconcile_every: float,
        progress: Callable[[float, ReplayStats], None] | None,
        mine: Callable[[str], bool] | None = None,
    ) -> None:
        self.reader = reader
        self.stats = ReplayStats()
        self.engine = Engine(config, _CountingObserver(self.stats))
        self.at = 0.0  # virtual time
        self.rounds = Rounds(
            self.engine, symbols=config.symbols, reconcile_every=reconcile_every, now=self._now
        )
        self.emit = emit
        self.progress = progress
        self.allowed = frozenset(config.symbols) if config.symbols is not None else None
        # `replay --jobs`: this process replays only the symbols `mine` accepts (each
        # symbol's decisions depend on its own inputs alone, so a partition decides alike)
        self.mine = mine
        # symbol -> [marketstate, risk, position], trimmed as the live reader returns them
        # (a rewrite of an ignored field is "no change" here too)
        self.store: dict[str, list[Hash | None]] = {}
        self.published: dict[str, Hash] = {}  # the proposal hashes this replay wrote
        self.seen: set[str] = set()  # every symbol that had an input (for the summary)

    def _now(self) -> float:
        return self.at

    # -- the input state ---------------------------------------------------------------
    def _load(self, state: dict[str, SymbolState]) -> None:
        allowed = self.allowed
        store: dict[str, list[Hash | None]] = {}
        mine = self.mine
        for symbol in sorted(state):
            if (allowed is not None and symbol not in allowed) or (mine and not mine(symbol)):
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

    def _apply(self, line: Set | Delete) -> bool:
        """Apply one change to the input state; False when it is not this replay's."""
        symbol = line.symbol
        if self.allowed is not None and symbol not in self.allowed:
            return False
        if self.mine is not None and not self.mine(symbol):
            return False
        index = _KIND_INDEX[line.kind]
        store = self.store
        row = store.get(symbol)
        if type(line) is Set:
            if row is None:
                row = store[symbol] = [None, None, None]
            row[index] = trim(line.kind, line.fields)
        elif row is not None:
            row[index] = None
            if row[0] is None and row[1] is None and row[2] is None:
                del store[symbol]
                self.seen.add(symbol)
        self.rounds.changed(symbol, self.at)
        return True

    # -- answering the rounds ----------------------------------------------------------
    def _drive(self, step: Step) -> None:
        answer: Any = None
        try:
            while True:
                answer = self._answer(step.send(answer))
        except StopIteration:
            return

    def _answer(self, request: Request) -> Any:
        if type(request) is Fetch:
            store = self.store
            out = []
            for symbol in request.symbols:
                row = store.get(symbol)
                out.append(
                    SymbolInputs(symbol)
                    if row is None
                    else SymbolInputs(symbol, row[0], row[1], row[2])
                )
            return out
        if type(request) is Write:
            self._write(request.outputs)
            return None
        if type(request) is Discover:
            with_position = [s for s, row in self.store.items() if row[2] is not None]
            return [*with_position, *self.published]
        assert type(request) is ReadPublished
        names = self.published if request.symbols is None else request.symbols
        return {s: self.published[s] for s in names if s in self.published}

    def _write(self, outputs: list[Output]) -> None:
        self.engine.confirm(outputs)
        stats = self.stats
        published = self.published
        for out in outputs:
            if type(out) is PublishOut:
                stats.publishes += 1
                published[out.symbol] = out.fields
            else:
                stats.retracts += 1
                published.pop(out.symbol, None)
        self.emit(outputs)

    def _round(self, at: float) -> None:
        self.at = at
        self._drive(self.rounds.round())
        self.stats.rounds += 1

    def _advance(self, limit: float, *, inclusive: bool) -> None:
        """Every timer and reconcile before `limit` (or at it), at its own time, in order."""
        rounds = self.rounds
        while True:
            at = rounds.wake_at()
            if at is None or at > limit or (at == limit and not inclusive):
                return
            self._round(at)

    # -- main loop ---------------------------------------------------------------------
    def run(self) -> ReplayStats:
        reader = self.reader
        header = reader.header
        stats = self.stats
        stats.start = self.at = header.start
        self._load(header.snapshot)
        self._drive(self.rounds.startup())
        rounds = self.rounds
        group_at = header.start
        end_at: float | None = None
        changes = 0
        progress = self.progress
        for batch in reader.batches():
            for line in batch:
                at = line.at
                if at != group_at:
                    # the changes stamped with one time are one live fetch: one round
                    if rounds.pending:
                        self._round(group_at)
                    wake = rounds.wake_at()
                    if wake is not None and wake < at:
                        self._advance(at, inclusive=False)
                    group_at = self.at = at
                cls = type(line)
                if cls is Set or cls is Delete:
                    changes += self._apply(line)  # type: ignore[arg-type]
                elif cls is Snapshot:
                    if rounds.pending:
                        self._round(at)
                    self._load(line.state)  # type: ignore[union-attr]
                    stats.snapshots += 1
                    rounds.gap("snapshot")  # a recorded gap: a resync, as live
                    self._round(at)
                else:
                    assert cls is End
                    end_at = at
                    stats.end_reason = line.reason  # type: ignore[union-attr]
            stats.changes = changes
            if progress is not None:
                progress(reader.progress(), stats)
        if rounds.pending:
            self._round(group_at)
        stats.changes = changes
        stats.complete = end_at is not None
        stats.end = end_at if end_at is not None else reader.last_at
        self._advance(stats.end, inclusive=True)
        stats.symbols = len(self.seen | set(self.store))
        return stats


def replay(
    path: str | os.PathLike[str],
    config: EngineConfig,
    emit: Callable[[list[Output]], None],
    *,
    reconcile_every: float | None = None,
    progress: Callable[[float, ReplayStats], None] | None = None,
    partition: tuple[int, int] | None = None,
) -> ReplayStats:
    """Run the recording at `path` through a fresh engine; every round's outputs go to
    `emit` in order. Raises RecordingError (with the line) on a bad file.

    `reconcile_every` defaults to the heartbeat, like the live service's reconcile.
    `partition` (k, n): replay only the symbols of partition k of n (`partition_of`);
    the counts in the stats are then that partition's.
    """
    every = config.gate.heartbeat_sec if reconcile_every is None else reconcile_every
    mine = None
    if partition is not None:
        k, n = partition
        mine = lambda symbol: partition_of(symbol, n) == k  # noqa: E731
    with RecordingReader(path) as reader, _quiet_engine_log():
        replayer = _Replayer(
            reader, config, emit, reconcile_every=every, progress=progress, mine=mine
        )
        return replayer.run()
