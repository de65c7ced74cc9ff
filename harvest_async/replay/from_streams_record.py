"""`record --from-streams`: stream history read page by page, merged, and converted.

On a Redis Cluster (REDIS_CLUSTER, detected as the service does) each stream is one key,
so XINFO and XRANGE go through redis-py's cluster client to the stream's node; the
`--snapshot-from` hashes are read as the live `record` reads them there (`ClusterRows`:
per node, no cross-slot transaction).
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import AsyncIterator, Sequence

import msgspec

from harvest_async import __version__
from harvest_async.clock import Clock, SystemClock, monotonic
from harvest_async.config import Settings
from harvest_async.core.timefmt import iso_utc_ms
from harvest_async.errors import ConfigError
from harvest_async.redis_io.client import Client, describe_url
from harvest_async.redis_io.cluster.cluster_rows import input_rows_at
from harvest_async.redis_io.cluster.setup import cluster_mode
from harvest_async.redis_io.streams import (
    PAGE,
    StreamInfo,
    cluster_history_client,
    history_client,
    stream_info,
    xrange_field,
    xrange_pages,
)
from harvest_async.replay.format import (
    FORMAT,
    KINDS,
    VERSION,
    Header,
    Prefixes,
)
from harvest_async.replay.from_streams import (
    OPTION,
    FromStreamsStats,
    StreamConverter,
    StreamSpec,
    TakenSnapshot,
)
from harvest_async.replay.recorder import Recorder
from harvest_async.replay.stream_window import StreamBound, entry_key

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


def _check_window(
    since: StreamBound | None, until: StreamBound | None, snapshot_from: str | None
) -> None:
    """Refuse arguments that cannot describe a window, before anything is read."""
    if since is not None and until is not None and until.end_key() < since.start_key():
        raise ConfigError("--until", f"{until.text!r} is before --since {since.text!r}")
    if snapshot_from is not None and until is not None:
        raise ConfigError(
            "--snapshot-from",
            "reads the hashes as they are now, so the window must end now: leave out --until",
        )


def _read_from(since: StreamBound | None, warmup: float | None) -> str:
    """Where reading starts: the warm-up before --since (when given) builds the state the
    window opens with; else each stream's beginning."""
    if since is not None and warmup is not None:
        return StreamBound.at_time(max(0.0, since.time - warmup)).xrange_start()
    return "-"


async def _convert(
    client: Client,
    converter: StreamConverter,
    specs: Sequence[StreamSpec],
    *,
    read_from: str,
    infos: Sequence[StreamInfo],
    until: StreamBound | None,
    end_at: float,
) -> FromStreamsStats:
    """Feed the merged entries to the converter; on any failure (cancellation too) the
    partial output is removed rather than left looking like a recording."""
    try:
        names = [spec.name for spec in specs]
        async for chunk in merged_entries(client, names, read_from, _ends(infos, until)):
            feed = converter.feed
            for ms, seq, index, entry_id, fields in chunk:
                feed(ms, seq, index, entry_id, fields)
        return converter.finish(end_at)
    except BaseException:
        converter.abort()
        raise


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
    _check_window(since, until, snapshot_from)
    began = monotonic()
    end_at = until.time if until is not None else clock.now()  # without --until: now
    client = (
        cluster_history_client(settings, name="harvest-async-record")
        if await cluster_mode(settings)
        else history_client(
            settings.redis_url, settings.redis_password, name="harvest-async-record"
        )
    )
    try:
        infos = await _infos(client, specs)
        if not any(info.exists for info in infos):
            raise ConfigError(OPTION, "none of the streams exists")
        read_from = _read_from(since, warmup)
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
        stats = await _convert(
            client, converter, specs, read_from=read_from, infos=infos, until=until, end_at=end_at
        )
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
    # the live recorder's reader: the same keys, the same handling of other types, on one
    # server or a cluster (REDIS_CLUSTER applies to this URL too)
    rows = await input_rows_at(
        msgspec.structs.replace(settings, redis_url=url), name="harvest-async-record"
    )
    try:
        recorder = Recorder(rows, settings.keys, clock, symbols=settings.symbols)
        at, state = await recorder.snapshot()
    finally:
        await rows.aclose()
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
