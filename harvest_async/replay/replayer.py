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
import csv
import io
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from typing import IO, Any

import msgspec

from harvest_async.clock import Clock, SystemClock
from harvest_async.config import Settings
from harvest_async.core.codec import PROPOSAL_FIELDS, Hash, SymbolInputs, trim
from harvest_async.core.engine import Engine, EngineConfig, Output, PublishOut, RetractOut
from harvest_async.errors import RedisUnavailable
from harvest_async.redis_io.client import REDIS_ERRORS
from harvest_async.replay.format import (
    Delete,
    End,
    Header,
    RecordingError,
    RecordingReader,
    Set,
    Snapshot,
    SymbolState,
    open_output,
)
from harvest_async.service.app import engine_config
from harvest_async.service.runner import FETCH_CHUNK  # a resync observes and evaluates per chunk

__all__ = [
    "CSV_COLUMNS",
    "IntoStats",
    "RecordingError",
    "ReplayStats",
    "SymbolComparison",
    "TimelineWriter",
    "atomic_output",
    "compare",
    "engine_config_for",
    "format_comparison",
    "replay",
    "replay_into",
    "replay_to_file",
    "shift_times",
]

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


# -- output ---------------------------------------------------------------------------

_FRONT = ("event", "symbol", "ts_epoch", "seq", "trigger", "plan_id", "harvest_action")
CSV_COLUMNS: tuple[str, ...] = (
    *_FRONT,
    *(name for name in PROPOSAL_FIELDS if name not in _FRONT),
    "reason",
)


class TimelineWriter:
    """Writes outputs as the audit stream carries them: JSON lines or CSV."""

    def __init__(self, stream: IO[bytes], fmt: str = "jsonl") -> None:
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"unknown format {fmt!r}")
        self.fmt = fmt
        self.stream = stream
        self.count = 0
        self._encoder = msgspec.json.Encoder()
        self._text: io.TextIOWrapper | None = None
        if fmt == "csv":
            self._text = io.TextIOWrapper(stream, encoding="utf-8", newline="", write_through=True)
            self._csv = csv.DictWriter(
                self._text, fieldnames=CSV_COLUMNS, lineterminator="\n", extrasaction="ignore"
            )
            self._csv.writeheader()

    def write(self, outputs: Sequence[Output]) -> None:
        if self._text is None:
            encode = self._encoder.encode
            write = self.stream.write
            for out in outputs:
                write(encode(out.audit_fields()))
                write(b"\n")
        else:
            for out in outputs:
                self._csv.writerow(out.audit_fields())
        self.count += len(outputs)

    def detach(self) -> None:
        """Flush; leave the underlying stream open."""
        if self._text is not None:
            self._text.flush()
            self._text.detach()
            self._text = None
        self.stream.flush()


class _Progress:
    """A one-line bar on stderr, redrawn at most ~5 times a second (only on a terminal)."""

    def __init__(self, stream: IO[str], label: str) -> None:
        self.stream = stream
        self.label = label
        self._last = -1.0
        self._clock = perf_counter
        self._began = perf_counter()

    def __call__(self, fraction: float, stats: ReplayStats) -> None:
        now = self._clock()
        if now - self._last < 0.2 and fraction < 1.0:
            return
        self._last = now
        width = 30
        filled = int(width * fraction)
        rate = stats.changes / max(now - self._began, 1e-9)
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%} "
            f"{stats.changes:,} changes, {stats.outputs:,} outputs ({rate:,.0f}/s)"
        )
        self.stream.flush()

    def done(self) -> None:
        if self._last >= 0:
            self.stream.write("\n")
            self.stream.flush()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A file that appears at `path` only when the block finishes without an error."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.partial")
    stream = open_output(tmp, compress=target.name.endswith(".gz"))
    try:
        yield stream  # type: ignore[misc]
    except BaseException:
        stream.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    stream.close()
    os.replace(tmp, target)


def replay_to_file(
    path: str | os.PathLike[str],
    config: EngineConfig,
    out: str | None,
    *,
    fmt: str = "jsonl",
    show_progress: bool | None = None,
    reconcile_every: float | None = None,
) -> ReplayStats:
    """Replay into `out` (None or '-': stdout). A file is written under a temporary name
    and renamed only when the whole recording replayed: a bad line leaves no output that
    looks complete."""
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    bar = _Progress(sys.stderr, Path(path).name) if show_progress else None
    try:
        if out is None or out == "-":
            writer = TimelineWriter(sys.stdout.buffer, fmt)
            try:
                stats = replay(
                    path, config, writer.write, reconcile_every=reconcile_every, progress=bar
                )
            finally:
                writer.detach()
            return stats
        with atomic_output(out) as stream:
            writer = TimelineWriter(stream, fmt)
            stats = replay(
                path, config, writer.write, reconcile_every=reconcile_every, progress=bar
            )
            writer.detach()
        return stats
    finally:
        if bar is not None:
            bar.done()


# -- compare --------------------------------------------------------------------------


class Decided(msgspec.Struct, frozen=True):
    """One decision in a timeline: a material publish (heartbeats are not decisions) or a
    retraction."""

    at: float
    event: str  # "publish" | "retract"
    action: str  # harvest_action, or "RETRACT"
    plan_id: str
    new_sl: str
    R_net: float
    kill_score: float
    reason: str


def _decided(out: Output) -> Decided | None:
    if isinstance(out, PublishOut):
        if out.trigger == "heartbeat":
            return None
        d = out.decision
        return Decided(
            out.at,
            "publish",
            d.harvest_action,
            out.plan_id,
            out.fields["new_sl_proposed"],
            d.R_net,
            d.kill_score,
            out.fields["reason_codes"],
        )
    return Decided(out.at, "retract", "RETRACT", "", "", math.nan, math.nan, out.reason)


class SymbolComparison(msgspec.Struct):
    symbol: str
    decisions: tuple[int, int]
    actions: dict[str, tuple[int, int]]
    only_a: list[str]
    only_b: list[str]
    first_divergence: dict[str, Any] | None

    @property
    def differs(self) -> bool:
        return self.first_divergence is not None


def _same(a: Decided, b: Decided) -> bool:
    return a.event == b.event and a.action == b.action and a.new_sl == b.new_sl


def _describe_decision(d: Decided | None) -> str:
    if d is None:
        return "(nothing)"
    if d.event == "retract":
        return f"retract ({d.reason})"
    sl = "" if d.new_sl == "None" else f" SL->{d.new_sl}"
    return f"{d.action}{sl} R={d.R_net:.3f} K={d.kill_score:.4f}"


def compare(
    path: str | os.PathLike[str],
    config_a: EngineConfig,
    config_b: EngineConfig,
    *,
    reconcile_every: float | None = None,
) -> tuple[list[SymbolComparison], ReplayStats]:
    """Replay twice (A: current tunables, B: the other file's) and compare per symbol."""
    timelines: list[dict[str, list[Decided]]] = []
    stats = ReplayStats()
    for config in (config_a, config_b):
        per_symbol: dict[str, list[Decided]] = {}

        def collect(
            outputs: list[Output], per_symbol: dict[str, list[Decided]] = per_symbol
        ) -> None:
            for out in outputs:
                d = _decided(out)
                if d is not None:
                    per_symbol.setdefault(out.symbol, []).append(d)

        stats = replay(path, config, collect, reconcile_every=reconcile_every)
        timelines.append(per_symbol)
    a_all, b_all = timelines
    result: list[SymbolComparison] = []
    for symbol in sorted(set(a_all) | set(b_all)):
        a = a_all.get(symbol, [])
        b = b_all.get(symbol, [])
        names = sorted({d.action for d in a} | {d.action for d in b}, key=_action_order)
        actions = {
            name: (
                sum(1 for d in a if d.action == name),
                sum(1 for d in b if d.action == name),
            )
            for name in names
        }
        divergence: dict[str, Any] | None = None
        for i in range(max(len(a), len(b))):
            da = a[i] if i < len(a) else None
            db = b[i] if i < len(b) else None
            if da is None or db is None or not _same(da, db):
                at = min(x.at for x in (da, db) if x is not None)
                divergence = {
                    "index": i,
                    "at": at,
                    "offset_sec": at - stats.start,
                    "a": _describe_decision(da),
                    "b": _describe_decision(db),
                }
                break
        result.append(
            SymbolComparison(
                symbol=symbol,
                decisions=(len(a), len(b)),
                actions=actions,
                only_a=[n for n, (ca, cb) in actions.items() if ca and not cb],
                only_b=[n for n, (ca, cb) in actions.items() if cb and not ca],
                first_divergence=divergence,
            )
        )
    return result, stats


_ORDER = ("NONE", "PARTIAL_25", "PARTIAL_50", "PARTIAL_75", "FULL_CLOSE_PROPOSED", "RETRACT")


def _action_order(name: str) -> int:
    return _ORDER.index(name) if name in _ORDER else len(_ORDER)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def format_comparison(
    rows: Sequence[SymbolComparison], label_a: str, label_b: str, stats: ReplayStats
) -> str:
    """A per-symbol text summary for people tuning the tunables."""
    out = [
        f"A = {label_a}",
        f"B = {label_b}",
        f"decisions = material publishes and retractions (heartbeats excluded); "
        f"{stats.end - stats.start:.1f} s of recording",
        "",
    ]
    differ = 0
    for row in rows:
        status = "differs" if row.differs else "same"
        differ += row.differs
        out.append(f"{row.symbol}: {status}; decisions A {row.decisions[0]} / B {row.decisions[1]}")
        counts = "  ".join(f"{name} {ca}/{cb}" for name, (ca, cb) in row.actions.items())
        out.append(f"  actions A/B: {counts}")
        if row.only_a:
            out.append(f"  only A proposed: {', '.join(row.only_a)}")
        if row.only_b:
            out.append(f"  only B proposed: {', '.join(row.only_b)}")
        div = row.first_divergence
        if div is not None:
            out.append(
                f"  first divergence at +{div['offset_sec']:.3f} s ({_iso(div['at'])}), "
                f"decision #{div['index'] + 1}:"
            )
            out.append(f"    A: {div['a']}")
            out.append(f"    B: {div['b']}")
    out.append("")
    out.append(f"{differ} of {len(rows)} symbols decide differently")
    return "\n".join(out) + "\n"


# -- into Redis -----------------------------------------------------------------------

_TIME_FIELDS = ("ts_timestamp", "ts_epoch", "created_at", "timestamp")


def shift_times(fields: Hash, offset: float) -> Hash:
    """The hash with its epoch fields moved by `offset` seconds, each kept in its format
    (integer seconds, float seconds, milliseconds, ISO-8601)."""
    if offset == 0.0:
        return fields
    out = dict(fields)
    for name in _TIME_FIELDS:
        raw = out.get(name)
        if raw is None:
            continue
        text = raw.strip()
        try:
            value = float(text)
        except ValueError:
            iso = text[:-1] + "+00:00" if text.endswith("Z") else text
            try:
                moment = datetime.fromisoformat(iso)
            except ValueError:
                continue
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            shifted = datetime.fromtimestamp(moment.timestamp() + offset, UTC)
            out[name] = shifted.isoformat().replace(
                "+00:00", "Z" if text.endswith("Z") else "+00:00"
            )
            continue
        if not math.isfinite(value) or value <= 0:
            continue
        millis = value > 1e11
        moved = value + (offset * 1000.0 if millis else offset)
        integral = text.lstrip("-").isdigit()
        out[name] = str(round(moved)) if integral else repr(round(moved, 3))
    return out


@dataclass(slots=True)
class IntoStats:
    changes: int = 0
    snapshots: int = 0
    transactions: int = 0
    seconds: float = 0.0
    recorded_seconds: float = 0.0
    offset: float = 0.0
    lag_max: float = 0.0
    keys: set[str] = field(default_factory=set)


async def replay_into(
    path: str | os.PathLike[str],
    client: Any,
    keys: Any,
    *,
    speed: float,
    retime: bool = True,
    clock: Clock | None = None,
    on_progress: Callable[[float, IntoStats], None] | None = None,
) -> IntoStats:
    """Write the recording's changes into Redis at the recorded pace / `speed`
    (0 = as fast as possible): each set as DEL + HSET of the whole hash, each delete as
    DEL, changes with one timestamp in one MULTI/EXEC. With `retime`, the hashes' epoch
    fields are moved to the time of writing, so a live service does not see them stale."""
    clock = clock or SystemClock()
    stats = IntoStats()
    key_for = {"marketstate": keys.marketstate, "risk": keys.risk, "position": keys.position}
    existing: set[tuple[str, str]] = set()
    ops: list[tuple[str, str, Hash | None, float]] = []  # (kind, symbol, fields, at)

    with RecordingReader(path) as reader:
        header: Header = reader.header
        wall0 = clock.now()

        def offset_for(at: float) -> float:
            if not retime:
                return 0.0
            return clock.now() - at

        async def flush(at: float) -> None:
            if not ops:
                return
            offset = offset_for(at)
            stats.offset = offset
            try:
                async with client.pipeline(transaction=True) as pipe:
                    for kind, symbol, fields, _at in ops:
                        key = key_for[kind](symbol)
                        pipe.delete(key)
                        if fields is not None:
                            pipe.hset(key, mapping=shift_times(fields, offset))
                    await pipe.execute()
            except REDIS_ERRORS as exc:
                raise RedisUnavailable(f"writing inputs: {type(exc).__name__}: {exc}") from exc
            stats.transactions += 1
            ops.clear()

        def snapshot_ops(state: dict[str, SymbolState], at: float) -> None:
            # the listed symbols become exactly as recorded (absent hashes deleted); keys
            # this replay wrote for symbols no longer listed are deleted
            wanted: set[tuple[str, str]] = set()
            for symbol in sorted(state):
                for kind in ("marketstate", "risk", "position"):
                    fields = state[symbol].get(kind)
                    ops.append((kind, symbol, fields or None, at))
                    if fields:
                        wanted.add((kind, symbol))
            for kind, symbol in sorted(existing - wanted):
                if symbol not in state:
                    ops.append((kind, symbol, None, at))
            existing.clear()
            existing.update(wanted)
            stats.keys.update(key_for[k](s) for k, s in wanted)

        async def pace(at: float) -> None:
            if speed > 0:
                target = wall0 + (at - header.start) / speed
                await clock.sleep_until(target)
                stats.lag_max = max(stats.lag_max, clock.now() - target)

        snapshot_ops(header.snapshot, header.start)
        await flush(header.start)
        group_at = header.start
        for batch in reader.batches():
            for line in batch:
                at = line.at
                if at != group_at:
                    if ops and (speed > 0 or len(ops) >= 500):
                        await flush(group_at)
                    await pace(at)
                    group_at = at
                if isinstance(line, Set):
                    ops.append((line.kind, line.symbol, line.fields, at))
                    existing.add((line.kind, line.symbol))
                    stats.keys.add(key_for[line.kind](line.symbol))
                    stats.changes += 1
                elif isinstance(line, Delete):
                    ops.append((line.kind, line.symbol, None, at))
                    existing.discard((line.kind, line.symbol))
                    stats.changes += 1
                elif isinstance(line, Snapshot):
                    snapshot_ops(line.state, at)
                    stats.snapshots += 1
                else:
                    assert isinstance(line, End)
            if on_progress is not None:
                on_progress(reader.progress(), stats)
        await flush(group_at)
        stats.recorded_seconds = reader.last_at - header.start
    stats.seconds = clock.now() - wall0
    return stats
