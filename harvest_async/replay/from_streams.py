"""`record --from-streams`: a recording built from the input streams' history (XRANGE).

The upstream producers append to input streams (`quantum:stream:marketstate`, ...); when
their entries carry the hash they wrote, the history in those streams is a recording
already. This module turns it into one (docs/recording.md, "From stream history"):

* each stream is mapped to an input kind (`NAME=marketstate|risk|position`);
* an entry is `symbol` (required), `op` (optional: `set`, the default, or `delete`) and
  the hash, whole, in its other fields: it becomes a `set` (or `delete`) line at the
  entry's time, the millisecond of its ID (the time Redis appended it; the hash's own time
  fields are data, kept as they are);
* an entry with nothing but `symbol` (and `op`) is a *change signal*: it says that the
  hash changed, not to what. It is completed from a snapshot of the current
  hashes (`--snapshot-from`) when it is its key's last entry up to the snapshot (so the
  hash still holds what it announced), and reported as unusable otherwise: never guessed;
* entries before `--since` are folded into the header's initial state (latest wins);
  with a snapshot, keys that no entry touched take the snapshot's value.

Streams are read in pages and merged in ID order (entries of one millisecond form one
round, as one read did live): memory is one page per stream plus the state of the
symbols, whatever the history's length.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harvest_async.core.timefmt import iso_utc_ms
from harvest_async.errors import ConfigError
from harvest_async.replay.format import (
    KINDS,
    Fields,
    Header,
    Kind,
    SymbolState,
)
from harvest_async.replay.recording_writer import RecordingWriter
from harvest_async.replay.stream_window import StreamBound

__all__ = [
    "FromStreamsStats",
    "StreamConverter",
    "StreamSpec",
    "TakenSnapshot",
    "parse_stream_specs",
]

OPTION = "--from-streams"
RESERVED = ("symbol", "op")  # entry fields that are not the hash's
EXAMPLES = 5  # unusable entries named in the report


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str
    kind: Kind


def parse_stream_specs(values: Sequence[str], *, option: str = OPTION) -> tuple[StreamSpec, ...]:
    """`NAME=KIND` items, comma-separated (the option may also be repeated)."""
    specs: list[StreamSpec] = []
    for value in values:
        for raw in value.split(","):
            item = raw.strip()
            if not item:
                continue
            name, sep, kind = item.rpartition("=")
            if not sep or not name:
                raise ConfigError(
                    option, f"expected STREAM=KIND (KIND one of {', '.join(KINDS)}), got {item!r}"
                )
            if kind not in KINDS:
                raise ConfigError(
                    option, f"unknown input kind {kind!r} for {name!r} (one of {', '.join(KINDS)})"
                )
            if any(s.name == name for s in specs):
                raise ConfigError(option, f"stream {name!r} is listed twice")
            specs.append(StreamSpec(name, KINDS[KINDS.index(kind)]))
    if not specs:
        raise ConfigError(option, "no stream given")
    return tuple(specs)


EntryKey = tuple[int, int, int]  # (ms, seq, stream index): the merged order
InputKey = tuple[str, str]  # (kind, symbol)


@dataclass(slots=True)
class TakenSnapshot:
    """The input hashes read at `at`, and what pass 1 learnt about the streams: each key's
    last entry, and the keys with an entry appended while the snapshot was being read
    (their hashes cannot say which entry they reflect)."""

    at: float
    state: dict[str, SymbolState]
    last: dict[InputKey, EntryKey] = field(default_factory=dict)
    unsettled: set[InputKey] = field(default_factory=set)

    def value(self, kind: str, symbol: str) -> Fields | None:
        hashes = self.state.get(symbol)
        return None if hashes is None else hashes.get(kind)

    def completes(self, kind: str, symbol: str, key: EntryKey) -> bool:
        """Whether the snapshot holds what the entry at `key` announced."""
        ikey = (kind, symbol)
        return ikey not in self.unsettled and self.last.get(ikey) == key


@dataclass(slots=True)
class FromStreamsStats:
    path: str = ""
    start: float = 0.0
    end: float = 0.0
    entries: int = 0  # read, every stream (pass 2)
    folded: int = 0  # before --since: folded into the initial state
    changes: int = 0  # set/delete lines written
    completed: int = 0  # change signals completed from the snapshot
    unusable: int = 0
    unusable_symbols: set[str] = field(default_factory=set)
    examples: list[str] = field(default_factory=list)
    unknown_initial: int = 0  # keys whose state before their first entry is unknown
    symbols: int = 0
    seconds: float = 0.0  # wall time of the conversion
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        rate = self.entries / self.seconds if self.seconds > 0 else 0.0
        return (
            f"recorded {self.changes} changes of {self.symbols} symbols from {self.entries} "
            f"stream entries ({self.folded} before --since, folded into the initial state) "
            f"to {self.path}: {iso_utc_ms(self.start)} to {iso_utc_ms(self.end)} "
            f"({self.end - self.start:.1f} s); {self.seconds:.1f} s, {rate:,.0f} entries/s"
        )

    def warnings(self) -> list[str]:
        out = list(self.notes)
        if self.unusable:
            shown = "; ".join(self.examples)
            rest = self.unusable - len(self.examples)
            more = f"; and {rest} more" if rest > 0 else ""
            out.append(
                f"{self.unusable} entries unusable ({len(self.unusable_symbols)} symbols: "
                f"their replay may differ from live after those entries): {shown}{more}"
            )
        if self.unknown_initial:
            out.append(
                f"{self.unknown_initial} input keys first appear after --since in a history "
                "that is incomplete (trimmed, or cut by --warmup): their state before their "
                "first entry is unknown and replays as absent"
            )
        return out


class StreamConverter:
    """Turns merged stream entries into a recording. Pure: no Redis, no clock.

    `feed()` the entries in merged order (ms, seq, stream index), then `finish()`. The
    writer is created at the first entry at or after `since` (or at `finish`), with the
    initial state folded from the entries before it.
    """

    def __init__(
        self,
        specs: Sequence[StreamSpec],
        out: str | os.PathLike[str],
        header: Header,
        *,
        since: StreamBound | None = None,
        symbols: frozenset[str] | None = None,
        snapshot: TakenSnapshot | None = None,
        history_complete: bool = True,
    ) -> None:
        self.kinds = [spec.kind for spec in specs]
        self.names = [spec.name for spec in specs]
        self.out = out
        self.header = header
        self.since = None if since is None else since.start_key()
        self.start = None if since is None else since.time
        self.allowed = symbols
        self.snapshot = snapshot
        self.fold: dict[InputKey, Fields | None] = {}  # before since; None = absent
        self.unknown: set[InputKey] = set()  # state unknown (an unusable entry)
        # an incomplete history: keys first seen in the window had an unknown state before
        self.seen: set[InputKey] | None = None if history_complete else set()
        self.writer: RecordingWriter | None = None
        self.stats = FromStreamsStats(path=os.fspath(out))
        self.read = 0  # entries fed

    # -- entries -----------------------------------------------------------------------
    def feed(self, ms: int, seq: int, index: int, entry_id: str, fields: dict[str, str]) -> None:
        self.read += 1
        symbol = fields.get("symbol")
        if not symbol:
            self._unusable(index, entry_id, None, "no symbol field")
            return
        if self.allowed is not None and symbol not in self.allowed:
            return
        kind = self.kinds[index]
        in_window = self.since is None or (ms, seq) >= self.since
        if in_window and self.writer is None:
            self._open(ms / 1000)
        seen = self.seen
        if seen is not None and (kind, symbol) not in seen:
            seen.add((kind, symbol))
            if in_window:
                self.stats.unknown_initial += 1
        value = self._value(kind, symbol, (ms, seq, index), entry_id, fields)
        if value is _LOST:
            if not in_window:
                self.fold.pop((kind, symbol), None)
                self.unknown.add((kind, symbol))
            # in the window the previous line stands: nothing better can be said
            return
        if not in_window:
            self.stats.folded += 1
            self.fold[(kind, symbol)] = value
            self.unknown.discard((kind, symbol))
            return
        writer = self.writer
        assert writer is not None
        if value is None:
            writer.delete(ms / 1000, kind, symbol)
        else:
            writer.set(ms / 1000, kind, symbol, value)

    def _value(
        self, kind: Kind, symbol: str, key: EntryKey, entry_id: str, fields: dict[str, str]
    ) -> Fields | None:
        """The hash after the entry (None: deleted), or _LOST."""
        op = fields.get("op", "set")
        if op == "delete":
            return None
        if op != "set":
            self._unusable(key[2], entry_id, symbol, f"unknown op {op!r}")
            return _LOST  # type: ignore[no-any-return]
        value = fields  # a fresh dict per entry: drop the entry's own fields in place
        for name in RESERVED:
            value.pop(name, None)
        if value:
            return value
        # a symbol only: a change signal
        snapshot = self.snapshot
        if snapshot is None:
            why = "a change signal, and no --snapshot-from to complete it"
        elif not snapshot.completes(kind, symbol, key):
            why = "a change signal that is not its key's last entry before the snapshot"
        elif (current := snapshot.value(kind, symbol)) is None:
            # deleted or expired since (expiry appends nothing to a stream): unknown when
            why = "a change signal, and the snapshot has no such key any more"
        else:
            self.stats.completed += 1
            return current
        self._unusable(key[2], entry_id, symbol, why)
        return _LOST  # type: ignore[no-any-return]

    def _unusable(self, index: int, entry_id: str, symbol: str | None, why: str) -> None:
        stats = self.stats
        stats.unusable += 1
        if symbol is not None:
            stats.unusable_symbols.add(symbol)
        if len(stats.examples) < EXAMPLES:
            who = f" ({symbol})" if symbol else ""
            stats.examples.append(f"{self.names[index]} {entry_id}{who}: {why}")

    # -- header and end ----------------------------------------------------------------
    def _initial_state(self) -> dict[str, SymbolState]:
        state: dict[str, SymbolState] = {}
        snapshot = self.snapshot
        if snapshot is not None:
            allowed = self.allowed
            for symbol, hashes in snapshot.state.items():
                if allowed is not None and symbol not in allowed:
                    continue
                for kind in KINDS:
                    value = hashes.get(kind)
                    if value and (kind, symbol) not in snapshot.last:
                        # no entry touched it: it held this value all along
                        setattr(state.setdefault(symbol, SymbolState()), kind, dict(value))
        for (name, symbol), value in self.fold.items():
            setattr(state.setdefault(symbol, SymbolState()), name, value)
        self.stats.unknown_initial += len(self.unknown)
        empty = SymbolState()
        return {s: state[s] for s in sorted(state) if state[s] != empty}

    def _open(self, first_at: float) -> None:
        start = self.start if self.start is not None else first_at
        header = self.header
        header.start = start
        header.snapshot = self._initial_state()
        self.stats.start = start
        self.writer = RecordingWriter(self.out, header, atomic=True)
        self.fold = {}

    def finish(self, end_at: float) -> FromStreamsStats:
        """Write the end line (at `end_at`, or the last line's time if later)."""
        if self.writer is None:
            self._open(end_at if self.start is None else self.start)
        writer = self.writer
        assert writer is not None
        writer.close(end_at=end_at, reason="streams")
        stats = self.stats
        stats.end = writer.last_at
        stats.changes = writer.changes
        stats.symbols = len(writer.symbols)
        stats.entries = self.read
        return stats

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


_LOST: Any = object()  # a change signal that cannot be completed
