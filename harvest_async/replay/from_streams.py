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

import heapq
import os
from bisect import bisect_right
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from harvest_async import __version__
from harvest_async.clock import Clock, SystemClock, monotonic
from harvest_async.config import Settings
from harvest_async.core.timefmt import iso_utc_ms
from harvest_async.errors import ConfigError
from harvest_async.redis_io.client import Client, client_for, describe_url
from harvest_async.redis_io.streams import (
    PAGE,
    StreamInfo,
    history_client,
    stream_info,
    xrange_field,
    xrange_pages,
)
from harvest_async.replay.format import (
    FORMAT,
    KINDS,
    VERSION,
    Fields,
    Header,
    Kind,
    Prefixes,
    SymbolState,
)
from harvest_async.replay.recorder import Recorder
from harvest_async.replay.recording_writer import RecordingWriter
from harvest_async.replay.stream_window import StreamBound, entry_key

__all__ = [
    "FromStreamsStats",
    "StreamConverter",
    "StreamSpec",
    "TakenSnapshot",
    "merged_entries",
    "parse_stream_specs",
    "record_from_streams",
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


# -- reading the streams ---------------------------------------------------------------

Merged = tuple[int, int, int, str, dict[str, str]]  # ms, seq, stream index, ID, fields


async def merged_entries(
    client: Client,
    names: Sequence[str],
    start: str,
    ends: Sequence[str | None],
    *,
    page: int = PAGE,
) -> AsyncIterator[list[Merged]]:
    """The streams' entries from `start` to each stream's end, merged in (ms, seq,
    stream) order, in chunks. A stream whose end is None is skipped."""
    pages = [
        None if end is None else xrange_pages(client, name, start, end, count=page).__aiter__()
        for name, end in zip(names, ends, strict=True)
    ]
    buffers: list[list[Merged]] = [[] for _ in names]

    async def refill(i: int) -> None:
        source = pages[i]
        if source is None:
            return
        got = await anext(source, None)
        if got is None:
            pages[i] = None
            return
        buffers[i] = [(*entry_key(eid), i, eid, fields) for eid, fields in got]

    for i in range(len(names)):
        await refill(i)
    while True:
        live = [i for i, b in enumerate(buffers) if b]
        if not live:
            return
        if len(live) == 1 and all(p is None for j, p in enumerate(pages) if j != live[0]):
            i = live[0]  # one stream left: its pages in order, no merging
            yield buffers[i]
            buffers[i] = []
            await refill(i)
            continue
        # everything up to the smallest last key among streams that may have more is
        # final: no later page of any stream can sort before it. Entries compare as
        # tuples: (ms, seq, stream index) is unique, so ID and fields are never compared;
        # (ms, seq, index + 1) sorts after every entry at or before (ms, seq, index).
        open_ends = [buffers[i][-1][:3] for i in live if pages[i] is not None]
        horizon: tuple[int, int, int] | None = None
        if open_ends:
            ms, seq, index = min(open_ends)
            horizon = (ms, seq, index + 1)
        parts: list[list[Merged]] = []
        for i in live:
            buffer = buffers[i]
            cut = len(buffer) if horizon is None else bisect_right(buffer, horizon)
            if cut:
                parts.append(buffer[:cut])
                buffers[i] = buffer[cut:]
        yield list(heapq.merge(*parts)) if len(parts) > 1 else parts[0]
        for i in range(len(names)):
            if not buffers[i]:
                await refill(i)


def _history_complete(info: StreamInfo, read_from: str) -> bool:
    """Whether reading from `read_from` sees every entry the stream ever had."""
    return not info.exists or (read_from == "-" and info.removed is False)


def _trim_note(info: StreamInfo, since: StreamBound) -> str:
    """What to say when a stream that lost old entries now starts after --since."""
    if info.first_id is None or info.removed is False:
        return ""  # empty, or nothing was ever removed: it simply begins later
    first = entry_key(info.first_id)
    if first <= since.start_key():
        return ""  # the stream reaches back to --since
    maybe = "may be " if info.removed is None else ""
    return (
        f"stream {info.name!r} {maybe}trimmed past --since: its history starts at "
        f"{iso_utc_ms(first[0] / 1000)} (entry {info.first_id}); changes before are missing"
    )


async def _infos(client: Client, specs: Sequence[StreamSpec]) -> list[StreamInfo]:
    return [await stream_info(client, spec.name, option=OPTION) for spec in specs]


def _ends(infos: Sequence[StreamInfo], until: StreamBound | None) -> list[str | None]:
    """Each stream's last entry to read (None: nothing to read)."""
    ends: list[str | None] = []
    for info in infos:
        last = info.last_id
        if last is not None and until is not None and entry_key(last) > until.end_key():
            last = until.xrange_end()
        ends.append(last)
    return ends


async def record_from_streams(
    settings: Settings,
    out: str,
    specs: Sequence[StreamSpec],
    *,
    since: StreamBound | None = None,
    until: StreamBound | None = None,
    warmup: float | None = None,
    snapshot_from: str | None = None,
    clock: Clock | None = None,
) -> FromStreamsStats:
    """Write a recording of `specs`' history between `since` and `until` to `out`.

    Without `until` the window ends now (the streams' last entries when they are first
    read). Entries before `since` are read from `since - warmup` (default: each stream's
    beginning). Raises ConfigError for bad arguments (a key that is not a stream, --until
    before --since, --snapshot-from with --until) and RedisUnavailable when Redis fails.
    """
    clock = clock or SystemClock()
    if since is not None and until is not None and until.end_key() < since.start_key():
        raise ConfigError("--until", f"{until.text!r} is before --since {since.text!r}")
    if snapshot_from is not None and until is not None:
        raise ConfigError(
            "--snapshot-from",
            "reads the hashes as they are now, so the window must end now: leave out --until",
        )
    began = monotonic()
    end_at = until.time if until is not None else clock.now()  # without --until: now
    client = history_client(
        settings.redis_url, settings.redis_password, name="harvest-async-record"
    )
    try:
        infos = await _infos(client, specs)
        if not any(info.exists for info in infos):
            raise ConfigError(OPTION, "none of the streams exists")
        read_from = "-"
        if since is not None and warmup is not None:
            read_from = StreamBound.at_time(max(0.0, since.time - warmup)).xrange_start()
        snapshot: TakenSnapshot | None = None
        if snapshot_from is not None:
            snapshot, infos = await _snapshot_and_last_entries(
                client,
                settings,
                specs,
                snapshot_from,
                read_from=read_from,
                before=infos,
                clock=clock,
            )
            end_at = snapshot.at
        converter = StreamConverter(
            specs,
            out,
            _header(settings, specs, since, until, snapshot_from),
            since=since,
            symbols=None if settings.symbols is None else frozenset(settings.symbols),
            snapshot=snapshot,
            history_complete=all(_history_complete(info, read_from) for info in infos),
        )
        try:
            names = [spec.name for spec in specs]
            async for chunk in merged_entries(client, names, read_from, _ends(infos, until)):
                feed = converter.feed
                for ms, seq, index, entry_id, fields in chunk:
                    feed(ms, seq, index, entry_id, fields)
            stats = converter.finish(end_at)
        except BaseException:
            converter.abort()
            raise
    finally:
        await client.aclose()
    _add_notes(stats, infos, specs, since, snapshot is not None)
    stats.seconds = monotonic() - began
    return stats


def _add_notes(
    stats: FromStreamsStats,
    infos: Sequence[StreamInfo],
    specs: Sequence[StreamSpec],
    since: StreamBound | None,
    with_snapshot: bool,
) -> None:
    for info, spec in zip(infos, specs, strict=True):
        if not info.exists:
            stats.notes.append(f"stream {spec.name!r} does not exist: no {spec.kind} history")
        elif since is not None and (note := _trim_note(info, since)):
            stats.notes.append(note)
    missing = [kind for kind in KINDS if all(spec.kind != kind for spec in specs)]
    if missing:
        held = "held at the snapshot's values" if with_snapshot else "absent throughout"
        stats.notes.append(f"no stream for {', '.join(missing)}: {held}")


async def _learn_last_entries(
    client: Client,
    specs: Sequence[StreamSpec],
    read_from: str,
    ends: Sequence[str | None],
    *,
    before: Sequence[StreamInfo],
    into: TakenSnapshot,
) -> None:
    """Pass 1 (with a snapshot only): each key's last entry, and the keys with an entry
    after the stream ends read before the snapshot. Reads only the `symbol` of each entry,
    stream by stream (the last one per key needs no merging)."""
    last = into.last
    for index, (spec, end) in enumerate(zip(specs, ends, strict=True)):
        if end is None:
            continue
        found: dict[str, str] = {}  # symbol -> its last entry ID in this stream
        async for page in xrange_field(client, spec.name, read_from, end, "symbol"):
            for entry_id, symbol in page:
                if symbol:
                    found[symbol] = entry_id
        limit = before[index].last_id
        settled = None if limit is None else entry_key(limit)
        for symbol, entry_id in found.items():
            ms, seq = entry_key(entry_id)
            ikey = (spec.kind, symbol)
            key = (ms, seq, index)
            if ikey not in last or last[ikey] < key:
                last[ikey] = key
            if settled is None or (ms, seq) > settled:
                into.unsettled.add(ikey)


async def _snapshot_and_last_entries(
    client: Client,
    settings: Settings,
    specs: Sequence[StreamSpec],
    url: str,
    *,
    read_from: str,
    before: Sequence[StreamInfo],
    clock: Clock,
) -> tuple[TakenSnapshot, list[StreamInfo]]:
    """The hashes at `url` now, and pass 1 over the streams up to their ends read after
    it (returned): an entry between the ends read before and after the snapshot may or may
    not show in it, so its key's change signals cannot be completed."""
    snapshot_client = client_for(
        url, settings.redis_password, retries=3, name="harvest-async-record"
    )
    try:
        # the live recorder's reader: the same keys, the same handling of other types
        recorder = Recorder(snapshot_client, settings.keys, clock, symbols=settings.symbols)
        at, state = await recorder.snapshot()
    finally:
        await snapshot_client.aclose()
    snapshot = TakenSnapshot(at, state)
    after = await _infos(client, specs)
    await _learn_last_entries(
        client, specs, read_from, _ends(after, None), before=before, into=snapshot
    )
    return snapshot, after


def _header(
    settings: Settings,
    specs: Sequence[StreamSpec],
    since: StreamBound | None,
    until: StreamBound | None,
    snapshot_from: str | None,
) -> Header:
    keys = settings.keys
    listed = ",".join(f"{spec.name}={spec.kind}" for spec in specs)
    meta = {"from_streams": listed}
    if since is not None:
        meta["since"] = since.text
    if until is not None:
        meta["until"] = until.text
    if snapshot_from is not None:
        meta["snapshot_from"] = describe_url(snapshot_from)
    return Header(
        format=FORMAT,
        version=VERSION,
        start=0.0,
        created_by=f"harvest-async {__version__}",
        source=f"{describe_url(settings.redis_url)} streams {listed}",
        prefixes=Prefixes(
            marketstate=keys.marketstate_prefix,
            risk=keys.risk_prefix,
            position=keys.position_prefix,
        ),
        symbols=list(settings.symbols) if settings.symbols is not None else None,
        meta=meta,
    )
