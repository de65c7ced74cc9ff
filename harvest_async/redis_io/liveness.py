"""Reading the publishers' liveness keys (`{liveness_prefix}{instance}`, written by
`publisher.LivenessWriter`): who is publishing, and when it last said so."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
import redis.asyncio as aioredis

from harvest_async.core.keys import Keys
from harvest_async.redis_io.client import redis_errors, scan_symbols

__all__ = ["Publisher", "read_publishers"]


class Publisher(msgspec.Struct, frozen=True):
    """A liveness key as read. It exists only while its publisher refreshes it (TTL)."""

    instance: str
    host: str = ""
    pid: str = ""
    version: str = ""
    symbols: str = ""
    last_beat_epoch: float | None = None
    ttl_sec: float | None = None  # what is left of the key's TTL when read

    def beat_age(self, now: float) -> float | None:
        return None if self.last_beat_epoch is None else max(0.0, now - self.last_beat_epoch)


def _epoch(raw: str | None) -> float | None:
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


async def read_publishers(
    client: aioredis.Redis,
    keys: Keys,
    *,
    names: Iterable[str] | None = None,
    limit: int = 100,
) -> list[Publisher]:
    """The live publishers' liveness hashes (sorted by instance): every one found by a
    SCAN, or only those of `names` (no SCAN: cheap enough to repeat every second)."""
    prefix = keys.liveness_prefix
    async with redis_errors("reading the liveness keys"):
        if names is None:
            names = await scan_symbols(client, prefix, limit)
        names = sorted(set(names))
        async with client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(prefix + name)
                pipe.pttl(prefix + name)
            replies = await pipe.execute(raise_on_error=False)
    out = []
    for i, name in enumerate(names):
        fields, pttl = replies[2 * i], replies[2 * i + 1]
        if not isinstance(fields, dict) or not fields:
            continue  # expired between SCAN and HGETALL, or not a hash
        out.append(
            Publisher(
                instance=name,
                host=fields.get("host", ""),
                pid=fields.get("pid", ""),
                version=fields.get("version", ""),
                symbols=fields.get("symbols", ""),
                last_beat_epoch=_epoch(fields.get("last_beat_epoch")),
                ttl_sec=pttl / 1000.0 if isinstance(pttl, int) and pttl >= 0 else None,
            )
        )
    return out
