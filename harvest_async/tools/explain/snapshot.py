"""What Redis holds for one symbol: its inputs (read by the service's own reader), its
proposal hash, the audit stream's last publish and retraction of it, the live publishers."""

from __future__ import annotations

import math

import msgspec

from harvest_async.config import Settings
from harvest_async.core.input_hashes import SymbolInputs
from harvest_async.redis_io.client import Client, endpoint_for, redis_errors
from harvest_async.redis_io.liveness import Publisher, read_publishers
from harvest_async.redis_io.reader import RedisInputReader

__all__ = ["STREAM_LOOKBACK", "Snapshot", "finite", "read_snapshot"]

STREAM_LOOKBACK = 2000  # audit entries searched for the symbol's last publish/retract


class Snapshot(msgspec.Struct, frozen=True):
    """What Redis holds for one symbol (as read at one moment)."""

    inputs: SymbolInputs
    proposal: dict[str, str] | None  # the proposal hash (None: no hash)
    publishers: list[Publisher]
    last_publish_at: float | None = None  # from the audit stream, when the hash is gone
    last_retract: tuple[float, str] | None = None  # (at, reason) from the audit stream


async def read_snapshot(client: Client, settings: Settings, symbol: str) -> Snapshot:
    keys = settings.keys
    reader = RedisInputReader(
        client, keys, endpoint_for(settings), timeout=settings.redis_timeout_sec
    )
    try:
        (inputs,) = await reader.fetch([symbol])
    finally:
        reader.close()
    context = f"explain: reading the proposal of {symbol}"
    async with redis_errors(context), client.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.proposal(symbol))
        pipe.xrevrange(keys.stream, count=STREAM_LOOKBACK)
        proposal, entries = await pipe.execute(raise_on_error=False)
    if not isinstance(proposal, dict):
        proposal = {}  # another type under the key (WRONGTYPE): the service replaces it
    if not isinstance(entries, list):
        entries = []  # no audit stream (or not a stream)
    last_publish_at = last_retract = None
    for _id, fields in entries:
        if fields.get("symbol") != symbol:
            continue
        if fields.get("event") == "retract" and last_retract is None:
            last_retract = (finite(fields.get("ts_epoch")) or 0.0, fields.get("reason", ""))
        elif fields.get("event") == "publish" and last_publish_at is None:
            last_publish_at = finite(fields.get("ts_epoch"))
        if last_publish_at is not None and last_retract is not None:
            break
    return Snapshot(
        inputs,
        proposal or None,
        await read_publishers(client, keys),
        last_publish_at,
        last_retract,
    )


def finite(raw: str | None) -> float | None:
    """A field as a finite number (None: absent, not a number, or not finite)."""
    try:
        value = float(raw) if raw else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None
