"""Reading input hashes within size limits: shared by the service, `record` and `doctor`.

Every input hash is read by a small server-side script, one key per call (so it stays
Redis Cluster compatible). The script refuses a hash with more than MAX_INPUT_FIELDS
fields, or with a field the service reads whose value is longer than MAX_INPUT_VALUE_BYTES,
before anything is copied: a 100k-field hash or a 10 MB value never crosses the wire and
never reaches the engine. A refused hash is handed over as a one-field marker hash
(`OVERSIZED`) that the parsers report as invalid input naming the key, the field
and the size. A key of another type stays bad input for its symbol (WRONGTYPE).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from harvest_async.config import Settings
from harvest_async.core.input_hashes import OVERSIZED, USED_FIELDS, Hash, trim
from harvest_async.core.keys import INPUT_KINDS, Keys
from harvest_async.redis_io.client import REDIS_OR_REPLY_ERRORS, redis_error, redis_errors

__all__ = [
    "READ_COMMANDS",
    "READ_SCRIPT",
    "READ_SHA",
    "InputLimits",
    "InputRow",
    "Mode",
    "decode_reply",
    "read_hashes",
    "read_input_rows",
    "unknown_command",
]

# "used": only the fields the service reads (the service); "all": the whole hash less the
# unread fields over the byte limit (a recording keeps whole hashes; doctor shows ages)
Mode = Literal["used", "all"]

# KEYS[1]: the hash. ARGV: max fields, max value bytes, mode, "probe" or "", then the
# names of the fields the service reads. Returns false (nil) for an absent key; a string
# naming the limit broken; else for "used" the named fields' values in order (HMGET; a
# hash that has none of them gives nils, not nil), for "all" name/value pairs. "probe"
# runs each command once and returns nil: the startup ACL check.
#
# MEMORY USAGE is O(1) for the small (listpack) hashes producers write and bounds the
# length of every value in the hash, so the per-field HSTRLEN checks run only when a
# value could be over the limit. Errors name the command: Redis 7.0's ACL error inside a
# script does not.
READ_SCRIPT = """
local key = KEYS[1]
local max_fields, max_bytes, mode = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local function call(command, ...)
  local reply = redis.pcall(command, ...)
  if type(reply) == 'table' and reply.err then
    local name = command
    if command == 'MEMORY' then name = 'MEMORY|USAGE' end
    error(reply.err .. ' [' .. name .. ']', 0)  -- a string: Redis 6.2 cannot raise a table
  end
  return reply
end
local function main()
  local n = call('HLEN', key)
  if ARGV[4] == 'probe' then
    call('MEMORY', 'USAGE', key, 'SAMPLES', '0')
    call('HSTRLEN', key, ARGV[5])
    call('HMGET', key, ARGV[5])
    if mode == 'all' then
      call('HGETALL', key)
      call('HKEYS', key)
    end
    return false
  end
  if n == 0 then return false end
  if n > max_fields then return 'fields ' .. n end
  local big = call('MEMORY', 'USAGE', key, 'SAMPLES', '0') > max_bytes
  if big then
    for i = 5, #ARGV do
      local size = call('HSTRLEN', key, ARGV[i])
      if size > max_bytes then return 'bytes ' .. ARGV[i] .. ' ' .. size end
    end
  end
  if mode == 'used' then return call('HMGET', key, unpack(ARGV, 5)) end
  if not big then return call('HGETALL', key) end
  local keep = {}
  for _, name in ipairs(call('HKEYS', key)) do
    if #name <= max_bytes and call('HSTRLEN', key, name) <= max_bytes then
      keep[#keep + 1] = name
    end
  end
  local out = {}
  if #keep == 0 then return out end
  local values = call('HMGET', key, unpack(keep))
  for i, name in ipairs(keep) do
    if values[i] then
      out[#out + 1] = name
      out[#out + 1] = values[i]
    end
  end
  return out
end
-- errors from `call` come back as error replies that keep the server's code (NOPERM...)
local ok, result = pcall(main)
if not ok then return redis.error_reply(result) end
return result
"""
READ_SHA = hashlib.sha1(READ_SCRIPT.encode()).hexdigest()
# EVALSHA_RO (Redis 7+, Valkey) needs only read access to the key, EVALSHA read and write;
# Redis 6.2 knows only EVALSHA (and has no read-only keys in its ACL anyway)
READ_COMMANDS = ("EVALSHA_RO", "EVALSHA")


def unknown_command(reply: object) -> bool:
    """An error saying the server does not know the command (EVALSHA_RO on 6.2): its
    reply, or redis-py's cluster client refusing to route a command that the node's
    COMMAND list lacks (raised before anything is sent)."""
    text = str(reply).lower()
    return isinstance(reply, Exception) and (
        "unknown command" in text or "command doesn't exist in redis commands" in text
    )


class InputLimits(msgspec.Struct, frozen=True):
    """MAX_INPUT_FIELDS and MAX_INPUT_VALUE_BYTES."""

    fields: int = 256
    value_bytes: int = 4096

    @classmethod
    def of(cls, settings: Settings) -> InputLimits:
        return cls(settings.max_input_fields, settings.max_input_value_bytes)

    def args(self, kind: str, mode: Mode, *, probe: bool = False) -> tuple[str, ...]:
        """The script's ARGV for an input hash of `kind`."""
        flag = "probe" if probe else ""
        return (str(self.fields), str(self.value_bytes), mode, flag, *USED_FIELDS[kind])


def _oversized(key: str, verdict: str, limits: InputLimits) -> Hash:
    what, *rest = verdict.split(" ")
    if what == "fields":
        detail = f"{key} has {rest[0]} fields (limit MAX_INPUT_FIELDS={limits.fields})"
    else:
        detail = (
            f"{key} field {rest[0]} is {rest[1]} bytes "
            f"(limit MAX_INPUT_VALUE_BYTES={limits.value_bytes})"
        )
    return {OVERSIZED: detail}


def _used(kind: str, values: list[str | None]) -> Hash:
    # the names are the parsers' (interned) ones: no per-reply copies of "unrealized_pnl"
    out = {name: v for name, v in zip(USED_FIELDS[kind], values, strict=True) if v is not None}
    side = out.get("side")
    if side is not None and len(side) < 8:
        out["side"] = sys.intern(side)  # LONG / SHORT / FLAT: shared, not one per symbol
    return out


def decode_reply(
    kind: str, key: str, reply: Any, limits: InputLimits, mode: Mode
) -> Hash | Exception | None:
    """The script's reply as a hash (None: key absent); an error reply is returned as is.

    "used" hashes have the codec's canonical (interned) names, as `trim` gives them."""
    if reply is None or isinstance(reply, Exception):
        return reply
    if isinstance(reply, str):
        return _oversized(key, reply, limits)
    if mode == "used":
        return _used(kind, reply)
    out = dict(zip(reply[::2], reply[1::2], strict=True))
    out.pop(OVERSIZED, None)  # a producer's field of that name is not our verdict
    return out


def read_error(kind: str, exc: Exception, context: str) -> Hash:
    """An error reply for one key: bad input if it holds another type (WRONGTYPE), else
    raised as the project's error (an ACL refusal, a busy server, ...)."""
    if str(exc).startswith("WRONGTYPE"):
        return trim(kind, exc)  # type: ignore[return-value]  # never None for an error
    raise redis_error(context, exc)


async def read_hashes(
    client: aioredis.Redis,
    keys: Sequence[tuple[str, str]],
    limits: InputLimits,
    mode: Mode,
    *,
    transaction: bool = False,
) -> list[Hash | None]:
    """(kind, key) pairs -> their hashes (None: absent) in one pipeline, or in one
    MULTI/EXEC with `transaction` (hashes as they were at one instant)."""
    if not keys:
        return []
    loaded = False
    for command in READ_COMMANDS:
        raw = await _run_script(client, command, keys, limits, mode, transaction=transaction)
        if not loaded and any(isinstance(r, NoScriptError) for r in raw):
            await load_read_script(client)
            loaded = True
            raw = await _run_script(client, command, keys, limits, mode, transaction=transaction)
        if not unknown_command(raw[0]):
            break
    out: list[Hash | None] = []
    for (kind, key), reply in zip(keys, raw, strict=True):
        fields = decode_reply(kind, key, reply, limits, mode)
        if isinstance(fields, Exception):
            fields = read_error(kind, fields, "reading inputs")
        out.append(fields)
    return out


# A symbol's three input hashes (market state, risk proposal, position); None: absent
InputRow = tuple[Hash | None, Hash | None, Hash | None]
ROWS_PER_READ = 500  # symbols per round trip (three hashes each)


async def read_input_rows(
    client: aioredis.Redis,
    keys: Keys,
    symbols: Sequence[str],
    limits: InputLimits,
    mode: Mode,
    *,
    transaction: bool = False,
) -> list[InputRow]:
    """Each symbol's three input hashes, ROWS_PER_READ symbols per pipeline (or per
    MULTI/EXEC with `transaction`: a symbol's hashes as they were at one instant)."""
    prefixes = keys.input_prefixes()
    rows: list[InputRow] = []
    for start in range(0, len(symbols), ROWS_PER_READ):
        chunk = symbols[start : start + ROWS_PER_READ]
        wanted = [(kind, prefixes[kind] + s) for s in chunk for kind in INPUT_KINDS]
        raw = await read_hashes(client, wanted, limits, mode, transaction=transaction)
        rows.extend((raw[i], raw[i + 1], raw[i + 2]) for i in range(0, len(raw), 3))
    return rows


async def _run_script(
    client: aioredis.Redis,
    command: str,
    keys: Sequence[tuple[str, str]],
    limits: InputLimits,
    mode: Mode,
    *,
    transaction: bool,
) -> list[Any]:
    try:
        async with client.pipeline(transaction=transaction) as pipe:
            for kind, key in keys:
                pipe.execute_command(command, READ_SHA, 1, key, *limits.args(kind, mode))
            return await pipe.execute(raise_on_error=False)
    except REDIS_OR_REPLY_ERRORS as exc:  # also MULTI or EXEC refused
        if unknown_command(exc):  # queued in MULTI: EXECABORT naming the command
            return [exc]
        raise redis_error("reading inputs", exc) from exc
    except RedisError as exc:
        if unknown_command(exc):  # the cluster client would not route it (6.2 cluster)
            return [exc]
        raise


async def load_read_script(client: aioredis.Redis) -> None:
    async with redis_errors("loading the input read script (SCRIPT LOAD)"):
        await client.script_load(READ_SCRIPT)
