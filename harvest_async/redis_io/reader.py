"""Reading the inputs for the engine: the input hashes (the hot path, on a wire connection
of its own), the symbols to track and the published proposals (redis-py, cold paths)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import redis.asyncio as aioredis

from harvest_async.core.input_hashes import Hash, SymbolInputs
from harvest_async.core.keys import Keys
from harvest_async.core.rounds import ALL_KINDS, KIND_BITS
from harvest_async.errors import (
    AuthenticationFailed,
    PermissionDenied,
    RedisReplyError,
    RedisUnavailable,
    ReplyTimeout,
)
from harvest_async.redis_io.client import (
    REDIS_ERRORS,
    REDIS_OR_REPLY_ERRORS,
    is_permission_error,
    refused,
    scan_symbols,
)
from harvest_async.redis_io.inputs_io import (
    READ_COMMANDS,
    READ_SCRIPT,
    READ_SHA,
    InputLimits,
    decode_reply,
    read_error,
    unknown_command,
)
from harvest_async.redis_io.wire import Endpoint, Reply, Wire, command

__all__ = ["INPUTS_CONNECTION", "RedisInputReader"]

# CLIENT SETNAME of the input reads' connection (CLIENT LIST shows it)
INPUTS_CONNECTION = "harvest-async-inputs"

_KINDS = ("marketstate", "risk", "position")
_KIND_BITS = tuple((kind, KIND_BITS[kind]) for kind in _KINDS)
_LOAD_READ_SCRIPT = command("SCRIPT", "LOAD", READ_SCRIPT)


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


class RedisInputReader:
    """Input hashes through the size-guarded read script (`inputs_io`), one call
    (EVALSHA_RO) per key, all of a chunk in one round trip on the wire; the script is
    loaded in the same round trip whenever the connection is new (it may be a restarted
    server) and after a NOSCRIPT. `client` (redis-py) serves discovery and the reading of
    published proposals."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        endpoint: Endpoint,
        *,
        limits: InputLimits | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.client = client
        self.keys = keys
        self.limits = limits or InputLimits()
        self._wire = Wire(endpoint, name=INPUTS_CONNECTION, timeout=timeout)
        self._calls: dict[str, tuple[bytes, bytes]] = {}
        self._prefixes = keys.input_prefixes()
        self._use(READ_COMMANDS[0])

    def close(self) -> None:
        self._wire.close()

    def _use(self, command_name: str) -> None:
        """Per kind: `command` <sha> 1, then the key, then the script's ARGV (packed once)."""
        self.command = command_name
        for kind in _KINDS:
            argv = self.limits.args(kind, "used")
            head = b"*%d\r\n" % (4 + len(argv)) + _bulk(command_name.encode())
            head += _bulk(READ_SHA.encode()) + _bulk(b"1")
            self._calls[kind] = (head, b"".join(_bulk(a.encode()) for a in argv))

    async def fetch(
        self, symbols: Sequence[str], kinds: Sequence[int] | None = None
    ) -> list[SymbolInputs]:
        """The input hashes of `symbols`; with `kinds` (per symbol, KIND_BITS) only those
        (the others None), all of one chunk in one round trip."""
        if not symbols:
            return []
        masks = [ALL_KINDS] * len(symbols) if kinds is None else kinds
        calls = self._plan(symbols, masks)
        raw = await self._replies(self._payload(calls), len(calls))
        if unknown_command(raw[0]) and self.command != READ_COMMANDS[-1]:
            self._use(READ_COMMANDS[-1])  # a server without EVALSHA_RO (Redis 6.2)
            raw = await self._replies(self._payload(calls), len(calls))
        got: list[list[Hash | None]] = [[None, None, None] for _ in symbols]
        for (i, index, kind, key), reply in zip(calls, raw, strict=True):
            got[i][index] = self._hash(kind, key, reply)
        return [
            # one string per symbol however often it is read
            SymbolInputs(sys.intern(sym), *row)
            for sym, row in zip(symbols, got, strict=True)
        ]

    def _plan(
        self, symbols: Sequence[str], masks: Sequence[int]
    ) -> list[tuple[int, int, str, str]]:
        """(symbol's index, kind's index, kind, key) of every hash to read."""
        prefixes = self._prefixes
        calls = []
        for i, (sym, mask) in enumerate(zip(symbols, masks, strict=True)):
            for index, (kind, bit) in enumerate(_KIND_BITS):
                if mask & bit:
                    calls.append((i, index, kind, prefixes[kind] + sym))
        return calls

    def _payload(self, calls: list[tuple[int, int, str, str]]) -> bytes:
        table = self._calls
        parts = []
        for _i, _index, kind, key in calls:
            head, argv = table[kind]
            parts.append(head)
            parts.append(_bulk(key.encode()))
            parts.append(argv)
        return b"".join(parts)

    def _hash(self, kind: str, key: str, reply: Reply) -> Hash | None:
        if reply is None:
            return None
        fields = decode_reply(kind, key, reply, self.limits, "used")
        if isinstance(fields, Exception):
            # a WRONGTYPE reply is bad input for one symbol, not a reason to stop
            return read_error(kind, fields, "reading inputs")
        return fields

    async def _replies(self, body: bytes, count: int) -> list[Reply]:
        kept = not self._wire.fresh
        try:
            try:
                raw = await self._roundtrip(body, count, load=not kept)
            except (PermissionDenied, AuthenticationFailed, ReplyTimeout):
                raise
            except RedisUnavailable:
                if not kept:
                    raise
                # the kept connection died while idle (CLIENT KILL, server restart) just
                # as it was written to: reading is idempotent, so once more, on a new one
                raw = await self._roundtrip(body, count, load=True)
            if any(_no_script(reply) for reply in raw):
                # the server forgot the script (SCRIPT FLUSH, a failover): load, read again
                raw = await self._roundtrip(body, count, load=True)
        except (PermissionDenied, AuthenticationFailed):
            raise
        except RedisUnavailable as exc:
            raise RedisUnavailable(f"reading inputs: {exc}") from exc
        return raw

    async def _roundtrip(self, body: bytes, count: int, *, load: bool) -> list[Reply]:
        if not load:
            return await self._wire.roundtrip(body, count)
        raw = await self._wire.roundtrip(_LOAD_READ_SCRIPT + body, count + 1)
        if isinstance(raw[0], RedisReplyError):
            raise refused("loading the input read script (SCRIPT LOAD)", raw[0])
        return raw[1:]

    # -- cold paths (redis-py) -------------------------------------------------------------
    async def _scan_symbols(self, prefix: str) -> set[str]:
        try:
            return set(await scan_symbols(self.client, prefix))
        except REDIS_OR_REPLY_ERRORS as exc:
            raise refused(f"scanning {prefix}*", exc) from exc

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
        for fields in raw:
            if isinstance(fields, Exception) and is_permission_error(str(fields)):
                raise refused("reading proposals", fields)
        return {
            # not a hash (WRONGTYPE): something to replace or delete, never to adopt
            sym: {"error": str(fields)} if isinstance(fields, Exception) else fields
            for sym, fields in zip(names, raw, strict=True)
            if fields
        }


def _no_script(reply: Reply) -> bool:
    return isinstance(reply, RedisReplyError) and reply.code == "NOSCRIPT"
