"""`record`: capture the input hashes and every change to them into a recording.

Same shape as the live service (crash-only): subscribe to keyspace notifications (and
input streams if configured) with `sources.KeyspaceSource`, take a full snapshot, then
consume events. Like the live runner, an event only says "look again": the changed
symbol's three hashes are read in one MULTI/EXEC and every hash that differs from what
was last recorded becomes a `set`/`delete` line, all stamped with the time of that read
(so a replay sees the changes together, as the live service did). A gap (the
subscription was re-established, notifications may be lost) is recorded as a fresh
`snapshot` line, never skipped; without notifications (poll mode) every poll reads all
symbols and records what changed.

On a Redis Cluster (REDIS_CLUSTER, detected as the service does) the same `Recorder`
reads through `ClusterRows` and listens with `ClusterSource` (one listener per primary).
A symbol's three hashes usually live on three nodes, and a transaction cannot span slots
(CROSSSLOT): they are read per node in one pipelined round trip each, the nodes in
parallel, so at nearly but not exactly one instant. A change of the cluster's topology
(a failover, a reshard) is a gap: it is recorded as a fresh `snapshot` line.

Lines are flushed at least once a second and the end marker is written on exit
(duration over, SIGINT/SIGTERM, cancellation).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial

import anyio

from harvest_async import __version__
from harvest_async.clock import Clock, SystemClock
from harvest_async.config import Settings
from harvest_async.core.keys import Keys
from harvest_async.core.ports import Event, Gap
from harvest_async.errors import RedisUnavailable
from harvest_async.redis_io.client import check_redis, client_for, describe_url
from harvest_async.redis_io.cluster.cluster_notifications import ClusterSource
from harvest_async.redis_io.cluster.cluster_rows import ClusterRows
from harvest_async.redis_io.cluster.setup import cluster_client, cluster_slots
from harvest_async.redis_io.input_rows import InputRows, ServerRows
from harvest_async.redis_io.inputs_io import InputLimits, InputRow
from harvest_async.redis_io.notifications import KeyspaceSource
from harvest_async.redis_io.permissions import verify_permissions
from harvest_async.replay.format import (
    FORMAT,
    KINDS,
    VERSION,
    Header,
    Prefixes,
    SymbolState,
)
from harvest_async.replay.recording_writer import RecordingWriter
from harvest_async.signals import cancel_on_signal

__all__ = ["RecordStats", "Recorder", "record"]

log = logging.getLogger(__name__)

FLUSH_EVERY = 1.0  # seconds
_ABSENT: InputRow = (None, None, None)


@dataclass(slots=True)
class RecordStats:
    path: str = ""
    changes: int = 0
    snapshots: int = 0  # gap snapshots (the header's initial snapshot not counted)
    symbols: int = 0
    seconds: float = 0.0
    reason: str = ""

    def summary(self) -> str:
        gaps = f", {self.snapshots} gap snapshot(s)" if self.snapshots else ""
        return (
            f"recorded {self.changes} changes of {self.symbols} symbols in "
            f"{self.seconds:.1f} s to {self.path}{gaps} ({self.reason})"
        )


class Recorder:
    """Reads inputs from Redis (`rows`: one server or a cluster) and writes what
    changed. Driven by `record()`."""

    def __init__(
        self,
        rows: InputRows,
        keys: Keys,
        clock: Clock,
        *,
        symbols: tuple[str, ...] | None,
    ) -> None:
        self.rows = rows
        self.keys = keys
        self.clock = clock
        self.symbols = symbols
        self._allowed = frozenset(symbols) if symbols is not None else None
        self.known: dict[str, InputRow] = {}  # symbol -> last recorded hashes
        self._dirty: dict[str, None] = {}
        self._gap: str | None = None
        self._wake = anyio.Event()
        self.writer: RecordingWriter | None = None

    # -- events ------------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        if isinstance(event, Gap):
            if self._gap is None or event.reason != "poll":
                self._gap = event.reason
        elif self._allowed is None or event.symbol in self._allowed:
            self._dirty[event.symbol] = None
        self._wake.set()

    def forget_gap(self) -> None:
        self._gap = None

    # -- reading -----------------------------------------------------------------------
    async def _discover(self) -> list[str]:
        if self.symbols is not None:
            return list(self.symbols)
        return sorted(set(self.known) | await self.rows.discover())

    async def _fetch(self, symbols: Sequence[str]) -> dict[str, InputRow]:
        # Whole hashes within the service's size limits (an oversized one is recorded as
        # the service reads it: invalid input saying why; so is a key of another type);
        # on one server a symbol's three hashes as they were at one instant (the module)
        rows = await self.rows.read(symbols)
        return dict(zip(symbols, rows, strict=True))

    @staticmethod
    def _state(rows: dict[str, InputRow]) -> dict[str, SymbolState]:
        return {symbol: SymbolState(*row) for symbol, row in sorted(rows.items()) if row != _ABSENT}

    async def snapshot(self) -> tuple[float, dict[str, SymbolState]]:
        rows = await self._fetch(await self._discover())
        at = self.clock.now()
        self.known = {s: r for s, r in rows.items() if r != _ABSENT}
        return at, self._state(rows)

    # -- recording ---------------------------------------------------------------------
    def _record_diff(self, rows: dict[str, InputRow], at: float) -> None:
        writer = self.writer
        assert writer is not None
        known = self.known
        for symbol, row in rows.items():
            before = known.get(symbol) or _ABSENT
            for index, kind in enumerate(KINDS):
                new = row[index]
                if new == before[index]:
                    continue
                if new is None:
                    writer.delete(at, kind, symbol)
                else:
                    writer.set(at, kind, symbol, new)
            if row == _ABSENT:
                known.pop(symbol, None)
            else:
                known[symbol] = row

    async def step(self) -> None:
        """Handle what is pending: a gap (snapshot), a poll (full diff) or changes."""
        writer = self.writer
        assert writer is not None
        self._wake = anyio.Event()
        gap, self._gap = self._gap, None
        if gap is not None:
            self._dirty.clear()
            if gap == "poll":
                rows = await self._fetch(await self._discover())
                self._record_diff(rows, self.clock.now())
            else:
                log.info("gap (%s): recording a fresh snapshot", gap)
                at, state = await self.snapshot()
                writer.snapshot(at, gap, state)
            return
        if self._dirty:
            batch = list(self._dirty)
            self._dirty.clear()
            try:
                rows = await self._fetch(batch)
            except BaseException:
                for symbol in batch:
                    self._dirty[symbol] = None
                raise
            self._record_diff(rows, self.clock.now())

    async def run(self, writer: RecordingWriter) -> None:
        """Consume events until cancelled, flushing at least every FLUSH_EVERY s."""
        self.writer = writer
        next_flush = self.clock.now() + FLUSH_EVERY
        delay = 0.2
        while True:
            if not self._dirty and self._gap is None:
                with anyio.move_on_after(max(0.0, next_flush - self.clock.now())):
                    await self._wake.wait()
            try:
                await self.step()
                delay = 0.2
            except RedisUnavailable as exc:
                log.warning("redis unavailable (%s); will snapshot again", exc)
                self._gap = self._gap or "redis error"
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
            if self.clock.now() >= next_flush:
                writer.flush()
                next_flush = self.clock.now() + FLUSH_EVERY


async def record(
    settings: Settings,
    out: str,
    *,
    duration: float | None = None,
    clock: Clock | None = None,
    handle_signals: bool = True,
    on_ready: Callable[[Recorder], Awaitable[None]] | None = None,
) -> RecordStats:
    """Record until `duration` seconds have passed, a signal arrives or the caller
    cancels; the file always gets its end marker. Raises RedisUnavailable if Redis
    cannot be reached at the start."""
    clock = clock or SystemClock()
    await check_redis(settings)
    rows, source = await _reads_and_source(settings)
    keys = settings.keys
    recorder = Recorder(rows, keys, clock, symbols=settings.symbols)
    stats = RecordStats(path=out, reason="cancelled")
    writer: RecordingWriter | None = None
    began = clock.now()
    try:
        async with anyio.create_task_group() as tg:
            if handle_signals:
                tg.start_soon(cancel_on_signal, tg.cancel_scope, partial(_on_signal, stats))
            await tg.start(source.run, recorder.emit)
            recorder.forget_gap()  # the snapshot below covers anything seen while subscribing
            at, state = await recorder.snapshot()
            began = at
            header = Header(
                format=FORMAT,
                version=VERSION,
                start=at,
                created_by=f"harvest-async {__version__}",
                source=describe_url(settings.redis_url),
                prefixes=Prefixes(
                    marketstate=keys.marketstate_prefix,
                    risk=keys.risk_prefix,
                    position=keys.position_prefix,
                ),
                symbols=list(settings.symbols) if settings.symbols is not None else None,
                snapshot=state,
            )
            writer = RecordingWriter(out, header)
            log.info(
                "recording %d symbols from %s to %s (mode=%s)",
                len(state),
                describe_url(settings.redis_url),
                out,
                source.mode,
            )
            if on_ready is not None:
                await on_ready(recorder)
            if duration is not None:
                with anyio.move_on_after(duration):
                    await recorder.run(writer)
                stats.reason = "duration"
                tg.cancel_scope.cancel()
            else:
                await recorder.run(writer)
    finally:
        with anyio.CancelScope(shield=True):
            if writer is not None:
                end_at = clock.now()
                writer.close(end_at=end_at, reason=stats.reason)
                stats.changes = writer.changes
                stats.snapshots = writer.snapshots
                stats.symbols = len(writer.symbols)
                stats.seconds = max(0.0, end_at - began)
            await rows.aclose()
    return stats


async def _reads_and_source(
    settings: Settings,
) -> tuple[InputRows, KeyspaceSource | ClusterSource]:
    """One server's reads and notifications, or a cluster's (per slot, per primary)."""
    slots = await cluster_slots(settings)
    limits = InputLimits.of(settings)
    instance = f"{settings.instance}-recorder"
    if slots is None:
        await verify_permissions(settings, "record")
        client = client_for(
            settings.redis_url, settings.redis_password, retries=3, name="harvest-async-record"
        )
        source = KeyspaceSource(
            settings.redis_url,
            settings.redis_password,
            settings.keys,
            instance=instance,
            input_streams=settings.input_streams,
            poll_interval=settings.poll_interval_sec,
            canary_timeout=settings.canary_timeout_sec,
        )
        return ServerRows(client, settings.keys, limits), source
    # the startup ACL probes assume one node (every key in reach): skipped, as by `run`
    rows = ClusterRows(
        cluster_client(settings, name="harvest-async-record"),
        settings.keys,
        slots,
        limits=limits,
        timeout=settings.redis_timeout_sec,
    )
    cluster_source = ClusterSource(
        settings.redis_url,
        settings.redis_password,
        settings.keys,
        slots,
        instance=instance,
        poll_interval=settings.poll_interval_sec,
        canary_timeout=settings.canary_timeout_sec,
    )
    return rows, cluster_source


def _on_signal(stats: RecordStats, signum: signal.Signals) -> None:
    log.info("%s received: writing the end marker and stopping", signum.name)
    stats.reason = "interrupted"
