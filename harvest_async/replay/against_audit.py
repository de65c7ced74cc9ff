"""`replay FILE --against-audit SOURCE`: replay, read the audit, diff, report."""

from __future__ import annotations

import os
from dataclasses import dataclass

import anyio

from harvest_async.core.engine import EngineConfig
from harvest_async.redis_io.streams import history_client, stream_info
from harvest_async.replay.audit_decisions import AuditCollector, replay_decisions
from harvest_async.replay.audit_diff import AuditDiff, diff
from harvest_async.replay.audit_export import audit_from_redis, read_audit_file, trim_note
from harvest_async.replay.replayer import ReplayStats
from harvest_async.replay.stream_window import StreamBound

__all__ = ["AgainstAudit", "against_audit", "is_redis_url"]

# -- the whole command -----------------------------------------------------------------


def is_redis_url(source: str) -> bool:
    return source.startswith(("redis://", "rediss://", "unix://"))


@dataclass(slots=True)
class AgainstAudit:
    result: AuditDiff
    stats: ReplayStats
    audit_entries: int
    notes: list[str]


def against_audit(
    path: str | os.PathLike[str],
    config: EngineConfig,
    source: str,
    *,
    stream: str,
    password: str | None = None,
    tolerance: float,
    reconcile_every: float | None = None,
) -> AgainstAudit:
    """Replay `path`, read the audit from `source` (a Redis URL: `stream` there; else an
    exported JSONL file) over the replay's window, and diff them."""
    replayed, stats = replay_decisions(path, config, reconcile_every=reconcile_every)
    lookback = config.gate.heartbeat_sec + tolerance + 1.0
    collector = AuditCollector(
        stats.start,
        stats.end,
        None if config.symbols is None else frozenset(config.symbols),
    )
    notes: list[str] = []
    if is_redis_url(source):
        notes.extend(_collect_from_redis(collector, source, stream, password, lookback))
    else:
        collector.add_all(read_audit_file(source))
        if collector.first_at is None:
            notes.append(f"{source} has no audit entry in the recording's window")
        elif collector.first_at > stats.start:
            notes.append(
                f"{source} has no entry at or before the recording's start: the live state "
                "there is unknown (export from one heartbeat before the start)"
            )
    result = diff(
        replayed, collector.sides(), start=stats.start, end=stats.end, tolerance=tolerance
    )
    return AgainstAudit(result, stats, collector.entries, notes)


def _collect_from_redis(
    collector: AuditCollector, url: str, stream: str, password: str | None, lookback: float
) -> list[str]:
    since = StreamBound.at_time(max(0.0, collector.start - lookback))
    until = StreamBound.at_time(collector.end)

    async def main() -> list[str]:
        client = history_client(url, password, name="harvest-async-replay")
        try:
            info = await stream_info(client, stream, option="--audit-stream")
            async for page in audit_from_redis(client, stream, since, until):
                collector.add_all(page)
        finally:
            await client.aclose()
        note = trim_note(info, since.time)
        return [note] if note else []

    return anyio.run(main)
