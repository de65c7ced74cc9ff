"""Write a recording's changes into a Redis at the recorded pace (`replay --into`).

On one server a group of changes (those with one timestamp) is one MULTI/EXEC. On a
Redis Cluster (`transaction=False`, the client redis-py's cluster client) each key's
commands go to the node serving its slot: a group whose keys span slots is written as
one pipeline per node, in parallel, not atomically (a transaction cannot span slots), so
a reader may briefly see part of a group. Pacing and retiming are the same.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from harvest_async.clock import Clock, SystemClock
from harvest_async.core.input_hashes import Hash
from harvest_async.core.keys import Keys
from harvest_async.redis_io.client import Client
from harvest_async.redis_io.input_writer import InputWriter
from harvest_async.replay.format import Delete, End, Header, Set, Snapshot, SymbolState
from harvest_async.replay.recording_reader import RecordingReader

# -- into Redis -----------------------------------------------------------------------

__all__ = ["IntoStats", "replay_into", "shift_times"]

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


class _Change(msgspec.Struct, frozen=True):
    """One hash to write (the whole hash) or delete (`fields` None)."""

    kind: str
    symbol: str
    new_fields: Hash | None

    @property
    def op(self) -> str:
        return "delete" if self.new_fields is None else "set"

    @property
    def fields(self) -> Hash:
        return self.new_fields or {}


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


class _Into:
    """The replay's state between lines: the changes waiting for one transaction, the
    hashes this replay has written (a later snapshot deletes those it no longer lists),
    and the recorded-to-wall clock mapping used for pacing and retiming."""

    def __init__(
        self,
        client: Client,
        keys: Keys,
        clock: Clock,
        stats: IntoStats,
        *,
        speed: float,
        retime: bool,
        start: float,
        transaction: bool = True,
    ) -> None:
        self.clock = clock
        self.stats = stats
        self.key_for = keys.input_key
        self.existing: set[tuple[str, str]] = set()
        # recorded TTLs are not kept (README)
        self.writer = InputWriter(client, keys, ttl={}, transaction=transaction)
        self.ops: list[tuple[str, str, Hash | None, float]] = []  # (kind, symbol, fields, at)
        self.speed = speed
        self.retime = retime
        self.start = start
        self.wall0 = clock.now()

    def offset_for(self, at: float) -> float:
        if not self.retime:
            return 0.0
        return self.clock.now() - at

    async def flush(self, at: float) -> None:
        """The waiting changes as one MULTI/EXEC (a cluster: per-node pipelines), their
        times moved to now."""
        if not self.ops:
            return
        offset = self.offset_for(at)
        self.stats.offset = offset
        await self.writer.write(
            [
                _Change(kind, symbol, fields and shift_times(fields, offset))
                for kind, symbol, fields, _at in self.ops
            ]
        )
        self.stats.transactions += 1
        self.ops.clear()

    def snapshot(self, state: dict[str, SymbolState], at: float) -> None:
        # the listed symbols become exactly as recorded (absent hashes deleted); keys
        # this replay wrote for symbols no longer listed are deleted
        wanted: set[tuple[str, str]] = set()
        for symbol in sorted(state):
            for kind in ("marketstate", "risk", "position"):
                fields = state[symbol].get(kind)
                self.ops.append((kind, symbol, fields or None, at))
                if fields:
                    wanted.add((kind, symbol))
        for kind, symbol in sorted(self.existing - wanted):
            if symbol not in state:
                self.ops.append((kind, symbol, None, at))
        self.existing.clear()
        self.existing.update(wanted)
        self.stats.keys.update(self.key_for(k, s) for k, s in wanted)

    def add(self, line: Set | Delete | Snapshot | End, at: float) -> None:
        """Queue one recorded line's changes."""
        if isinstance(line, Set):
            self.ops.append((line.kind, line.symbol, line.fields, at))
            self.existing.add((line.kind, line.symbol))
            self.stats.keys.add(self.key_for(line.kind, line.symbol))
            self.stats.changes += 1
        elif isinstance(line, Delete):
            self.ops.append((line.kind, line.symbol, None, at))
            self.existing.discard((line.kind, line.symbol))
            self.stats.changes += 1
        elif isinstance(line, Snapshot):
            self.snapshot(line.state, at)
            self.stats.snapshots += 1
        else:
            assert isinstance(line, End)

    async def pace(self, at: float) -> None:
        """Wait until the recorded time `at` is due on the wall clock (never with speed 0)."""
        if self.speed > 0:
            target = self.wall0 + (at - self.start) / self.speed
            await self.clock.sleep_until(target)
            self.stats.lag_max = max(self.stats.lag_max, self.clock.now() - target)


async def replay_into(
    path: str | os.PathLike[str],
    client: Client,
    keys: Keys,
    *,
    speed: float,
    retime: bool = True,
    transaction: bool = True,
    clock: Clock | None = None,
    on_progress: Callable[[float, IntoStats], None] | None = None,
) -> IntoStats:
    """Write the recording's changes into Redis at the recorded pace / `speed`
    (0 = as fast as possible): each set as DEL + HSET of the whole hash, each delete as
    DEL, changes with one timestamp in one MULTI/EXEC (`transaction=False` on a cluster:
    per-node pipelines, see the module). With `retime`, the hashes' epoch
    fields are moved to the time of writing, so a live service does not see them stale."""
    clock = clock or SystemClock()
    stats = IntoStats()
    with RecordingReader(path) as reader:
        header: Header = reader.header
        into = _Into(
            client,
            keys,
            clock,
            stats,
            speed=speed,
            retime=retime,
            start=header.start,
            transaction=transaction,
        )
        into.snapshot(header.snapshot, header.start)
        await into.flush(header.start)
        group_at = header.start
        for batch in reader.batches():
            for line in batch:
                at = line.at
                if at != group_at:
                    # paced: a transaction per timestamp; speed 0: timestamps batched, 500+ changes
                    if into.ops and (speed > 0 or len(into.ops) >= 500):
                        await into.flush(group_at)
                    await into.pace(at)
                    group_at = at
                into.add(line, at)
            if on_progress is not None:
                on_progress(reader.progress(), stats)
        await into.flush(group_at)
        stats.recorded_seconds = reader.last_at - header.start
    stats.seconds = clock.now() - into.wall0
    return stats
