"""Writing proposals: the audit entry and the hash change of each output in one
server-side script call, on a wire connection of its own (docs/outputs.md).

The write script (`WRITE_SCRIPT`, interface version 1) takes an output's fields once and,
atomically on the server: checks with the ACL that it may run every command it is about
to run (Redis 7+, Valkey), appends the audit entry FIRST (`XADD ... MAXLEN ~`), then
replaces the proposal hash (`DEL` + `HSET`) and sets its TTL (`PEXPIRE`, §2.5), or for a
retraction deletes it. Redis never rolls back a script: writes made before an error stay.
Hence the order and the replies:

* the XADD refused (OOM, WRONGTYPE, READONLY, an ACL refusal): nothing was changed. An
  out-of-memory refusal can only come at a script's first write, never after it;
* a command after the XADD failed (only an ACL refusal on Redis 6.2, which has no
  `redis.acl_check_cmd`, or a TTL the server rejects): the reply's code is `TOUCHED`, the
  audit entry exists and the hash is behind it (never ahead); the runner writes the
  proposal again.

KEYS: [1] the proposal hash, [2] the audit stream (absent with ENABLE_STREAM=false: no
XADD). ARGV: [1] the interface version "1", [2] the op `publish` | `retract`, [3] the
output's seq (named in error replies), [4] the TTL in ms ("0": none; publish only), [5]
the stream's MAXLEN, [6...] field, value, ...: for a publish the hash's fields (the audit
entry is `event=publish` followed by them), for a retraction the audit entry's fields
after `event=retract`. Reply: the audit entry's id ("" without a stream).

Interface version 2 (a publisher group, INTERFACE §6) is a fenced write: KEYS [1] the
proposal hash, [2] the partition's lease, [3] its epoch, [4] the stream (if any); ARGV
as in version 1 with [6] the writer's instance and [7] the lease epoch it holds before the
fields (from [8]). Unless the lease holds that instance and the epoch key that epoch, the
script refuses (`FENCED ...`) before writing anything; the audit entry carries
`instance` and `lease_epoch`. Without a group nothing of this is sent (version 1).

A batch of outputs goes out as MULTI, one EVALSHA per output, EXEC, in one round trip: a
refusal stays local to its output (D1), and the batch is all or nothing against a lost
connection, so one output tells whether an uncertain write landed (D3). A batch of one is
a bare EVALSHA, atomic by itself. The script is
loaded (SCRIPT LOAD) in the same round trip whenever the connection is new, and after a
NOSCRIPT. The sink never replays a write blindly: when the outcome is unknown it looks
first, and only a write known not to have landed is sent again (once, and only when its
kept connection had died while idle).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

from harvest_async.core.input_hashes import Hash
from harvest_async.core.keys import Keys
from harvest_async.core.ports import Output, PublishOut
from harvest_async.core.proposal import PROPOSAL_FIELDS
from harvest_async.errors import (
    AuthenticationFailed,
    Fenced,
    PermissionDenied,
    RedisReplyError,
    RedisUnavailable,
    ReplyTimeout,
    WriteRefused,
    WriteUncertain,
)
from harvest_async.redis_io.client import refused
from harvest_async.redis_io.leases import FenceFor
from harvest_async.redis_io.wire import Endpoint, Reply, Wire, command

__all__ = ["SCRIPT_VERSION", "WRITES_CONNECTION", "WRITE_SCRIPT", "WRITE_SHA", "RedisSink"]

log = logging.getLogger(__name__)

# CLIENT SETNAME of the proposal writes' connection (CLIENT LIST shows it)
WRITES_CONNECTION = "harvest-async-writes"
SCRIPT_VERSION = "1"

WRITE_SCRIPT = """
-- harvest-async proposal write, interface versions 1 and 2 (docs/outputs.md)
local hash, stream = KEYS[1], KEYS[2]
local version, op, seq, ttl, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if (version ~= '1' and (version ~= '2' or #KEYS < 3)) or (op ~= 'publish' and op ~= 'retract')
    or not tonumber(ttl) then
  return {err = 'ERR harvest write script v1: bad call (version ' .. tostring(version)
    .. ', op ' .. tostring(op) .. ')'}
end
local first, tagged = 6, {}
if version == '2' then
  -- a publisher group's write: the fence, before anything is written (INTERFACE §6)
  local lease, epoch = KEYS[2], KEYS[3]
  stream = KEYS[4]
  local holder, current = redis.call('GET', lease), redis.call('GET', epoch)
  if holder ~= ARGV[6] or current ~= ARGV[7] then
    return {err = 'FENCED ' .. lease .. ' is held by ' .. tostring(holder) .. ' at epoch '
      .. tostring(current) .. ', not by ' .. ARGV[6] .. ' at ' .. ARGV[7] .. ' seq=' .. seq}
  end
  first, tagged = 8, {'instance', ARGV[6], 'lease_epoch', ARGV[7]}
end
local expire = op == 'publish' and tonumber(ttl) > 0
-- refused by the ACL before anything is written (Redis 7+, Valkey; 6.2 lacks the check)
local allowed = redis.acl_check_cmd
if allowed then
  local function denied(name)
    return {err = "NOPERM this user has no permissions to run the '" .. name
      .. "' command (proposal write script)"}
  end
  if stream and not allowed('XADD', stream, '*', 'event', op) then return denied('xadd') end
  if not allowed('DEL', hash) then return denied('del') end
  if op == 'publish' and not allowed('HSET', hash, 'event', op) then return denied('hset') end
  if expire and not allowed('PEXPIRE', hash, '1') then return denied('pexpire') end
end
-- an error reply in the server's words; Redis 6.2 words an ACL refusal inside a script
-- without its NOPERM code: give it the code, as 7+ does
local function words(err, name)
  if string.find(err, "can't run this command", 1, true) then
    return "NOPERM this user has no permissions to run the '" .. string.lower(name)
      .. "' command (proposal write script)"
  end
  return err .. ' [' .. name .. ']'
end
-- the audit entry first: refused, it leaves everything as it was
local id = ''
if stream then
  if first == 6 then
    id = redis.pcall('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'event', op, unpack(ARGV, 6))
  else
    local entry = {'XADD', stream, 'MAXLEN', '~', maxlen, '*', 'event', op, unpack(tagged)}
    for i = first, #ARGV do entry[#entry + 1] = ARGV[i] end
    id = redis.pcall(unpack(entry))
  end
  if type(id) == 'table' and id.err then return {err = words(id.err, 'XADD')} end
end
-- from here on the entry exists: a failure leaves the hash behind it, never ahead
local function failed(reply, name)
  if type(reply) == 'table' and reply.err then
    return {err = 'TOUCHED ' .. words(reply.err, name) .. ' seq=' .. seq}
  end
  return nil
end
local bad = failed(redis.pcall('DEL', hash), 'DEL')
if not bad and op == 'publish' then
  bad = failed(redis.pcall('HSET', hash, unpack(ARGV, first)), 'HSET')
  if not bad and expire then bad = failed(redis.pcall('PEXPIRE', hash, ttl), 'PEXPIRE') end
end
return bad or id
"""
WRITE_SHA = hashlib.sha1(WRITE_SCRIPT.encode()).hexdigest()

_LOAD = command("SCRIPT", "LOAD", WRITE_SCRIPT)
_MULTI = command("MULTI")
_EXEC = command("EXEC")
_TOUCHED = "TOUCHED"
_FENCED = "FENCED"
_NOSCRIPT = "NOSCRIPT"
# how far back the audit stream is searched for a retraction whose outcome is unknown
_LOOKBACK_MS = 300_000
_PAGE = 1000


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


_NAMES_TEXT: dict[str, str] = {
    name: f"${len(name)}\r\n{name}\r\n" for name in (*PROPOSAL_FIELDS, "reason")
}
_PUBLISH = _bulk(b"publish")


def _name_text(name: str) -> str:
    return f"${len(name)}\r\n{name}\r\n"


_RETRACT = _bulk(b"retract")


def _pairs(fields: Hash) -> tuple[int, bytes]:
    """(number of fields, their RESP bulk strings, name and value alternating)."""
    # Formatted as text and encoded once: 3x faster than per value. Lengths count
    # characters, which are bytes only for ASCII, hence the check and the fallback.
    names = _NAMES_TEXT
    text = "".join(
        [f"{names.get(k) or _name_text(k)}${len(v)}\r\n{v}\r\n" for k, v in fields.items()]
    )
    if text.isascii():
        return len(fields), text.encode()
    parts = []
    for name, value in fields.items():
        parts.append(_bulk(name.encode()))
        parts.append(_bulk(value.encode()))
    return len(fields), b"".join(parts)


def _retract_fields(out: Output) -> Hash:
    fields = out.audit_fields()
    del fields["event"]  # the script writes `event` itself
    return fields


class RedisSink:
    """Proposal writes (publish, retract) through the write script; see the module."""

    def __init__(
        self,
        endpoint: Endpoint,
        keys: Keys,
        *,
        enable_stream: bool = True,
        stream_maxlen: int = 100_000,
        proposal_ttl: float = 0.0,
        timeout: float = 5.0,
        wire: Wire | None = None,
        fence: FenceFor | None = None,
    ) -> None:
        """`proposal_ttl`: seconds (PROPOSAL_TTL_SEC; 0: no TTL). `wire`: the connection
        to write on (default: a new one to `endpoint`); a test may pass one that
        injects faults. `fence`: a publisher group's lease token per symbol (version 2
        writes, fenced by the server); None: version 1."""
        self.keys = keys
        self.enable_stream = enable_stream
        self.stream_maxlen = stream_maxlen
        self._wire = wire or Wire(endpoint, name=WRITES_CONNECTION, timeout=timeout)
        self._multi_allowed = True  # as the last write saw it (_exchange)
        stream = _bulk(keys.stream.encode()) if enable_stream else b""
        self._numkeys = (2 if enable_stream else 1) + (2 if fence is not None else 0)
        self._fence = fence
        self._head = _bulk(b"EVALSHA") + _bulk(WRITE_SHA.encode()) + _bulk(b"%d" % self._numkeys)
        self._stream = stream
        ttl_ms = max(0, round(proposal_ttl * 1000))
        self._limits = _bulk(b"%d" % ttl_ms) + _bulk(b"%d" % stream_maxlen)
        self._version = _bulk(SCRIPT_VERSION.encode() if fence is None else b"2")

    def close(self) -> None:
        self._wire.close()

    # -- the write ------------------------------------------------------------------------
    async def write(self, outputs: Sequence[Output]) -> None:
        """Write all outputs (see the Sink protocol for what it raises)."""
        if not outputs:
            return
        for attempt in (1, 2):
            kept = not self._wire.fresh
            try:
                # a refusal (WriteRefused: OOM, READONLY, a stream key of another type...)
                # is Redis's answer, not a lost connection: it goes to the caller as is
                await self._transaction(outputs)
                return
            except (WriteRefused, PermissionDenied, AuthenticationFailed):
                raise
            except WriteUncertain as exc:
                failure: RedisUnavailable = exc
            except RedisUnavailable as exc:  # nothing was sent
                if attempt == 2 or not kept:
                    raise RedisUnavailable(f"writing proposals: {exc}") from exc
                continue  # the kept connection had closed: once more on a new one
            # EXEC may or may not have run. Find out before anyone retries.
            try:
                landed = await self._landed(outputs)
            except RedisUnavailable as exc:
                raise WriteUncertain(
                    f"transaction outcome unknown ({failure}); check failed: {exc}"
                ) from exc
            if landed:
                log.warning("transaction outcome was unknown (%s) but it landed", failure)
                return
            if attempt == 2 or not kept or isinstance(failure, ReplyTimeout):
                break
            # it did not land and the kept connection had died while idle (CLIENT KILL,
            # server restart): a closed connection runs nothing later, so once more
        raise RedisUnavailable(f"writing proposals: {failure}") from failure

    async def landed(self, outputs: Sequence[Output]) -> bool:
        """Whether an earlier write whose outcome was unknown (WriteUncertain) got applied.

        The batch is all or nothing, so one output tells. Raises RedisUnavailable while
        Redis cannot answer.
        """
        try:
            return await self._landed(outputs)
        except RedisUnavailable as exc:
            raise RedisUnavailable(f"checking an earlier write: {exc}") from exc

    async def _transaction(self, outputs: Sequence[Output]) -> None:
        calls = [self._call(out) for out in outputs]
        refusal = await self._run(outputs, calls, load=self._wire.fresh)
        if refusal == _NOSCRIPT:
            # the server forgot the script (SCRIPT FLUSH, a failover): nothing ran
            refusal = await self._run(outputs, calls, load=True)
            if refusal == _NOSCRIPT:
                raise WriteRefused("NOSCRIPT the write script is not loaded after SCRIPT LOAD")
        if isinstance(refusal, WriteRefused):
            if "READONLY" in str(refusal):  # a demoted primary: ask the sentinels again
                self._wire.primary_lost()
            if refusal.reply.startswith(_FENCED):
                raise Fenced(refusal.reply, landed=refusal.landed, touched=refusal.touched)
            raise refusal

    def _call(self, out: Output) -> bytes:
        """EVALSHA <sha> <numkeys> <hash> [<stream>] 1 <op> <seq> <ttl> <maxlen> fields..."""
        if isinstance(out, PublishOut):
            op, (n, pairs) = _PUBLISH, _pairs(out.fields)
        else:
            op, (n, pairs) = _RETRACT, _pairs(_retract_fields(out))
        key = _bulk(self.keys.proposal(out.symbol).encode())
        seq = _bulk(b"%d" % out.seq)
        count = 3 + self._numkeys + 5 + 2 * n
        if self._fence is not None:
            token = self._fence(out.symbol)
            key += _bulk(token.lease.encode()) + _bulk(token.epoch_key.encode())
            pairs = _bulk(token.instance.encode()) + _bulk(b"%d" % token.epoch) + pairs
            count += 2
        return b"*%d\r\n%b%b%b%b%b%b%b%b" % (
            count, self._head, key, self._stream, self._version, op, seq, self._limits, pairs
        )  # fmt: skip

    async def _run(
        self, outputs: Sequence[Output], calls: list[bytes], *, load: bool
    ) -> WriteRefused | str | None:
        """One round trip: [SCRIPT LOAD,] MULTI, the calls, EXEC; what Redis refused."""
        if len(calls) == 1:
            # one call is atomic by itself: no MULTI/EXEC around it (the usual batch at
            # moderate rates); its reply is then read as EXEC's would be
            head = [_LOAD] if load else []
            raw = await self._wire.roundtrip(b"".join([*head, calls[0]]), len(head) + 1)
            replies: list[Reply] = [*raw[:-1], "OK", "QUEUED", [raw[-1]]]
        else:
            replies = await self._exchange([_MULTI, *calls, _EXEC], load=load)
        if load:
            loaded, replies = replies[0], replies[1:]
            if isinstance(loaded, RedisReplyError) and _all_noscript(replies):
                error = refused("loading the proposal write script (SCRIPT LOAD)", loaded)
                if isinstance(error, PermissionDenied):
                    raise error
                raise WriteRefused(f"SCRIPT LOAD: {loaded}")  # nothing ran
        return _refusal(outputs, replies)

    async def _exchange(self, parts: list[bytes], *, load: bool) -> list[Reply]:
        """Send MULTI ... EXEC; its replies. A refused MULTI (the ACL changed under us)
        lets the calls after it run one by one: each is still atomic, and their replies
        tell what ran; until MULTI is accepted again it is sent alone first, with nothing
        following a refusal."""
        head = [_LOAD] if load else []
        if self._multi_allowed:
            replies = await self._wire.roundtrip(b"".join(head + parts), len(head + parts))
        else:
            first = await self._wire.roundtrip(b"".join([*head, parts[0]]), len(head) + 1)
            if isinstance(first[-1], RedisReplyError):
                raise WriteRefused(str(first[-1]))  # nothing else was sent
            replies = first + await self._wire.roundtrip(b"".join(parts[1:]), len(parts) - 1)
        multi = replies[len(head)]
        self._multi_allowed = not isinstance(multi, RedisReplyError)
        done = replies[-1]
        if isinstance(done, RedisReplyError) and done.code != "EXECABORT" and self._multi_allowed:
            # EXEC itself refused: the server may still hold the transaction open
            self._wire.close()
        return replies

    # -- did an uncertain write land? -------------------------------------------------------
    async def _landed(self, outputs: Sequence[Output]) -> bool:
        """A publish landed iff its hash carries its seq (the script writes the hash last,
        so its audit entry exists too); a retraction iff its audit entry is in the stream
        (without a stream: iff the hash is gone, which is all a retraction does)."""
        publishes = [o for o in outputs if isinstance(o, PublishOut)]
        out = publishes[-1] if publishes else outputs[-1]
        key = self.keys.proposal(out.symbol)
        if isinstance(out, PublishOut) or not self.enable_stream:
            (seq,) = await self._wire.roundtrip(command("HGET", key, "seq"), 1)
            if isinstance(seq, RedisReplyError):
                raise refused("checking an uncertain write", seq)
            return seq == str(out.seq) if isinstance(out, PublishOut) else seq is None
        return await self._in_stream(out)

    async def _in_stream(self, out: Output) -> bool:
        """Whether the stream holds `out`'s entry: newest first, back to a few minutes
        before `out` was computed (clock skew and queueing included)."""
        oldest = max(0, int(out.at * 1000) - _LOOKBACK_MS)
        end = "+"
        seq = str(out.seq)
        while True:
            (page,) = await self._wire.roundtrip(
                command("XREVRANGE", self.keys.stream, end, str(oldest), "COUNT", _PAGE), 1
            )
            if isinstance(page, RedisReplyError):
                raise refused("checking an uncertain write", page)
            assert isinstance(page, list)
            for entry in page:
                assert isinstance(entry, list)
                flat = entry[1]
                assert isinstance(flat, list)
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                if fields.get("symbol") == out.symbol and fields.get("seq") == seq:
                    return True
            if len(page) < _PAGE:
                return False
            last = page[-1]
            assert isinstance(last, list) and isinstance(last[0], str)
            end = "(" + last[0]  # exclusive: the next page starts below it


def _all_noscript(replies: Sequence[Reply]) -> bool:
    """Whether the script ran nowhere for want of being loaded."""
    results = _results(replies)
    return bool(results) and all(_code(r) == _NOSCRIPT for r in results)


def _results(replies: Sequence[Reply]) -> Sequence[Reply]:
    """The scripts' own replies: inside EXEC's array, or (MULTI refused) where QUEUED
    would have been."""
    multi, queued, done = replies[0], replies[1:-1], replies[-1]
    if isinstance(multi, RedisReplyError):
        return queued
    return done if isinstance(done, list) else ()


def _code(reply: Reply) -> str | None:
    return reply.code if isinstance(reply, RedisReplyError) else None


def _refusal(outputs: Sequence[Output], replies: Sequence[Reply]) -> WriteRefused | str | None:
    """None if every output was written; NOSCRIPT if the script ran nowhere; else what
    Redis refused, in its words, and what became of each output.

    Refusals at queueing time (NOPERM on the script's keys, READONLY...) abort the whole
    transaction (EXECABORT): nothing ran, and outputs whose call was accepted are
    collateral. Inside EXEC, each script call succeeds, is refused having changed nothing,
    or reports TOUCHED (its audit entry written, the hash not replaced).
    """
    multi, done = replies[0], replies[-1]
    if (
        type(done) is list
        and not isinstance(multi, RedisReplyError)
        and not any(isinstance(r, RedisReplyError) for r in done)
    ):
        return None  # the usual case, first
    if _all_noscript(replies):
        return _NOSCRIPT
    queued = replies[1:-1]
    errors = [r for r in (multi, *queued, done) if isinstance(r, RedisReplyError)]
    if isinstance(multi, RedisReplyError) or isinstance(done, list):
        results = _results(replies)
        failed = [r for r in results if isinstance(r, RedisReplyError)]
        if not failed and not isinstance(multi, RedisReplyError):
            return None
        landed = [o for o, r in zip(outputs, results, strict=True) if _code(r) is None]
        touched = [o for o, r in zip(outputs, results, strict=True) if _code(r) == _TOUCHED]
        words = str((failed or errors)[0])
        return WriteRefused(words, landed=landed, touched=touched)
    # EXEC refused: EXECABORT (a call refused while queueing), or EXEC itself
    blamed = [isinstance(r, RedisReplyError) for r in queued]
    if not any(blamed):
        return WriteRefused(str(errors[0]))  # EXEC itself: every output was refused
    collateral = [o for o, bad in zip(outputs, blamed, strict=True) if not bad]
    return WriteRefused(str(errors[0]), collateral=collateral)
