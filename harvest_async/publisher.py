"""Redis side of the engine: read inputs, write proposals + audit atomically, liveness.

Every publish replaces the proposal hash (DEL + HSET) and appends its audit entry in one
MULTI/EXEC; a retraction deletes the hash and appends a `retract` entry. The client used
here never retries by itself: when EXEC's outcome is unknown (connection lost mid-way),
the sink looks at the stream/hash to learn whether it landed, so an audit entry is never
appended twice.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence

import redis.asyncio as aioredis

from harvest_async import __version__
from harvest_async.codec import Hash, SymbolInputs, iso_utc
from harvest_async.engine import Output, PublishOut
from harvest_async.errors import RedisUnavailable, WriteUncertain
from harvest_async.keys import Keys
from harvest_async.redis_io import REDIS_ERRORS

__all__ = ["LivenessWriter", "RedisInputReader", "RedisSink"]

log = logging.getLogger(__name__)

# Only these fields are kept from the input hashes: less memory per symbol, and a
# rewrite of an ignored field (buffer_size, mu, ...) is not a change.
_USED = {
    "marketstate": frozenset({"sigma", "ts", "p_trend", "p_mr", "p_chop", "ts_timestamp"}),
    "risk": frozenset({"stop_dist_pct", "proposed_sl", "proposed_tp"}),
    "position": frozenset(
        {
            "side", "entry_price", "unrealized_pnl", "current_price", "mark_price", "quantity",
            "position_amt", "ts_epoch", "stop_loss", "take_profit", "created_at", "age_sec",
            "current_sl", "current_tp", "peak_price", "trough_price", "entry_risk_usdt",
        }
    ),
}  # fmt: skip


# A reply that is not a hash (WRONGTYPE: another type was written under the key) becomes
# a value the codec rejects in a field it requires, so the symbol is retracted as invalid.
_NOT_A_HASH_FIELD = {"marketstate": "sigma", "risk": "stop_dist_pct", "position": "side"}


def trim(kind: str, fields: dict[str, str] | Exception) -> dict[str, str] | None:
    if isinstance(fields, Exception):
        return {_NOT_A_HASH_FIELD[kind]: f"<not a hash: {fields}>"}
    if not fields:
        return None
    used = _USED[kind]
    return {k: v for k, v in fields.items() if k in used}


class RedisInputReader:
    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    async def fetch(self, symbols: Sequence[str]) -> list[SymbolInputs]:
        keys = self.keys
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for sym in symbols:
                    pipe.hgetall(keys.marketstate(sym))
                    pipe.hgetall(keys.risk(sym))
                    pipe.hgetall(keys.position(sym))
                # a WRONGTYPE reply is bad input for one symbol, not a reason to stop
                raw = await pipe.execute(raise_on_error=False)
        except REDIS_ERRORS as exc:
            raise RedisUnavailable(f"reading inputs: {exc}") from exc
        out = []
        for i, sym in enumerate(symbols):
            out.append(
                SymbolInputs(
                    sym,
                    trim("marketstate", raw[3 * i]),
                    trim("risk", raw[3 * i + 1]),
                    trim("position", raw[3 * i + 2]),
                )
            )
        return out

    async def _scan_symbols(self, prefix: str) -> set[str]:
        found: set[str] = set()
        pattern = _glob_escape(prefix) + "*"
        try:
            async for key in self.client.scan_iter(match=pattern, count=1000):
                symbol = key[len(prefix) :]
                if symbol:
                    found.add(symbol)
        except REDIS_ERRORS as exc:
            raise RedisUnavailable(f"scanning {prefix}*: {exc}") from exc
        return found

    async def discover(self) -> list[str]:
        # proposals too: one whose position key vanished must be retracted
        positions = await self._scan_symbols(self.keys.position_prefix)
        proposals = await self._scan_symbols(self.keys.harvest_prefix)
        return sorted(positions | proposals)

    async def read_published(self, symbols: Sequence[str] | None) -> dict[str, Hash]:
        names = (
            sorted(await self._scan_symbols(self.keys.harvest_prefix))
            if symbols is None
            else list(symbols)
        )
        if not names:
            return {}
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for sym in names:
                    pipe.hgetall(self.keys.proposal(sym))
                raw = await pipe.execute(raise_on_error=False)
        except REDIS_ERRORS as exc:
            raise RedisUnavailable(f"reading proposals: {exc}") from exc
        return {
            # not a hash (WRONGTYPE): something to replace or delete, never to adopt
            sym: {"error": str(fields)} if isinstance(fields, Exception) else fields
            for sym, fields in zip(names, raw, strict=True)
            if fields
        }


class RedisSink:
    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        *,
        enable_stream: bool = True,
        stream_maxlen: int = 100_000,
    ) -> None:
        self.client = client
        self.keys = keys
        self.enable_stream = enable_stream
        self.stream_maxlen = stream_maxlen

    async def write(self, outputs: Sequence[Output]) -> None:
        if not outputs:
            return
        try:
            await self._transaction(outputs)
            return
        except REDIS_ERRORS as exc:
            failure: BaseException = exc
        # EXEC may or may not have run. Find out before anyone retries.
        try:
            landed = await self._landed(outputs[-1])
        except REDIS_ERRORS as exc:
            raise WriteUncertain(
                f"transaction outcome unknown ({failure}); check failed: {exc}"
            ) from exc
        if landed:
            log.warning("transaction outcome was unknown (%s) but it landed", failure)
            return
        raise RedisUnavailable(f"writing proposals: {failure}") from failure

    async def _transaction(self, outputs: Sequence[Output]) -> None:
        keys = self.keys
        async with self.client.pipeline(transaction=True) as pipe:
            for out in outputs:
                key = keys.proposal(out.symbol)
                pipe.delete(key)  # replace the whole hash: no stale foreign fields
                if isinstance(out, PublishOut):
                    pipe.hset(key, mapping=out.fields)  # type: ignore[arg-type]
                if self.enable_stream:
                    pipe.xadd(
                        keys.stream,
                        out.audit_fields(),  # type: ignore[arg-type]
                        maxlen=self.stream_maxlen,
                        approximate=True,
                    )
            await pipe.execute()

    async def _landed(self, out: Output) -> bool:
        """Did the transaction whose last output is `out` get applied?"""
        seq = str(out.seq)
        if self.enable_stream:
            entries: list[tuple[str, dict[str, str]]] = await self.client.xrevrange(
                self.keys.stream, count=200
            )  # type: ignore[assignment]
            return any(f.get("symbol") == out.symbol and f.get("seq") == seq for _id, f in entries)
        current = await self.client.hget(self.keys.proposal(out.symbol), "seq")
        if isinstance(out, PublishOut):
            return bool(current == seq)
        return current is None  # a retraction without a stream is idempotent


class LivenessWriter:
    """`{liveness_prefix}{instance}`: who is publishing, refreshed while healthy."""

    def __init__(self, client: aioredis.Redis, keys: Keys, instance: str, ttl: float) -> None:
        self.client = client
        self.key = keys.liveness(instance)
        self.instance = instance
        self.ttl = ttl
        self.started_at: float | None = None

    async def beat(self, now: float, symbols: int) -> None:
        if self.started_at is None:
            self.started_at = now
        fields = {
            "instance": self.instance,
            "version": __version__,
            "pid": str(os.getpid()),
            "host": socket.gethostname(),
            "started_at": iso_utc(self.started_at),
            "last_beat_epoch": repr(round(now, 3)),
            "symbols": str(symbols),
        }
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(self.key, mapping=fields)  # type: ignore[arg-type]
                pipe.pexpire(self.key, int(self.ttl * 1000))
                await pipe.execute()
        except REDIS_ERRORS as exc:
            raise RedisUnavailable(f"liveness write: {exc}") from exc

    async def clear(self) -> None:
        try:
            await self.client.delete(self.key)
        except REDIS_ERRORS as exc:
            log.debug("liveness clear failed: %s", exc)


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
