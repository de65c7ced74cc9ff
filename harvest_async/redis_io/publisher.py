"""Redis side of the engine: read inputs, write proposals + audit atomically, liveness.

Every publish replaces the proposal hash (DEL + HSET) and appends its audit entry in one
MULTI/EXEC; a retraction deletes the hash and appends a `retract` entry. The client used
here never retries by itself: when EXEC's outcome is unknown (connection lost mid-way),
the sink looks at the stream/hash to learn whether it landed, so an audit entry is never
appended twice; only a transaction known not to have landed is sent once more, and only
when its kept connection had died while idle.

The hot paths (input reads, proposal transactions) speak RESP directly on a kept
connection each (`_Wire`); liveness, discovery and checks use the client as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import hiredis  # a dependency (redis[hiredis]); the fast reply path reads its Reader
import redis.asyncio as aioredis
from redis._parsers.hiredis import NOT_ENOUGH_DATA
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from harvest_async import __version__
from harvest_async.core.input_hashes import Hash, SymbolInputs, trim
from harvest_async.core.keys import Keys
from harvest_async.core.ports import Output, PublishOut
from harvest_async.core.proposal import PROPOSAL_FIELDS
from harvest_async.core.timefmt import iso_utc
from harvest_async.errors import PermissionDenied, RedisUnavailable, WriteRefused, WriteUncertain
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

__all__ = ["LivenessWriter", "RedisInputReader", "RedisSink", "trim"]

log = logging.getLogger(__name__)

# -- the hot path's wire -----------------------------------------------------------------
#
# redis-py's Pipeline packs ~1 µs per argument and spends several µs of bookkeeping per
# reply; a publish is ~140 arguments (DEL, HSET and XADD of 34 fields) and a fetch 3
# replies per symbol. The input reads and the proposal transactions instead go out as
# RESP bytes built here (field names encoded once), in one write on a connection of their
# own, and their replies are read straight from the parser.


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(_bulk(a) for a in args)


_NAMES: dict[str, bytes] = {
    name: _bulk(name.encode()) for name in (*PROPOSAL_FIELDS, "event", "reason")
}
_MULTI = _command(b"MULTI")
_EXEC = _command(b"EXEC")
_DEL = b"*2\r\n" + _bulk(b"DEL")
_LOAD_READ_SCRIPT = _command(b"SCRIPT", b"LOAD", READ_SCRIPT.encode())


_NAMES_TEXT: dict[str, str] = {name: f"${len(name)}\r\n{name}\r\n" for name in _NAMES}


def _name_text(name: str) -> str:
    return f"${len(name)}\r\n{name}\r\n"


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


class _Wire:
    """One connection kept for a hot path: packed commands out, replies in order.

    The connection comes from the client's pool (so closing the client closes it) with no
    per-read socket timeout; one deadline covers the whole round trip instead. Any error
    or cancellation mid-way drops the connection, so a reply can never be read by the
    wrong request. Error replies are returned as exception objects, not raised.
    """

    def __init__(self, client: aioredis.Redis, timeout: float) -> None:
        self._pool = client.connection_pool
        self._conn: Any = None
        self._socket_timeout: Any = None
        self.timeout = timeout

    @property
    def fresh(self) -> bool:
        """True when the next round trip opens a new connection."""
        return self._conn is None

    async def roundtrip(self, payload: bytes, replies: int) -> list[Any]:
        conn = self._conn
        if conn is None:
            conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
            self._socket_timeout = conn.socket_timeout
            conn.socket_timeout = None
            self._conn = conn
        # The deadline: a timer that aborts the socket, so the pending read fails at
        # once. A cancel scope per round trip (anyio.fail_after) costs 5x as much.
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            writer = getattr(conn, "_writer", None)
            if writer is not None:
                writer.transport.abort()

        timer = asyncio.get_running_loop().call_later(self.timeout, expire)
        done = False
        try:
            await conn.send_packed_command(payload, check_health=False)
            out = await _read_replies(conn, replies)
            done = True
            return out
        except REDIS_ERRORS as exc:
            if expired:
                raise TimeoutError(f"no reply within {self.timeout:g} s") from exc
            raise
        finally:
            timer.cancel()
            if not done:
                await self.drop()

    async def drop(self) -> None:
        """Close the kept connection; the next round trip opens a new one."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await conn.disconnect()
            conn.socket_timeout = self._socket_timeout
            with contextlib.suppress(Exception):
                await self._pool.release(conn)


async def _read_replies(conn: Any, count: int) -> list[Any]:
    """`count` replies in order; error replies as exception objects.

    With redis-py's hiredis parser the replies are taken from its reader directly, which
    costs a fraction of `read_response` per reply (thousands per batch); otherwise, and
    should redis-py's internals change shape, through `read_response`.
    """
    parser = conn._parser
    reader = getattr(parser, "_reader", None)
    fill = getattr(parser, "read_from_socket", None)
    out: list[Any] = []
    if isinstance(reader, hiredis.Reader) and fill is not None:
        gets = reader.gets
        while len(out) < count:
            reply = gets()
            if reply is NOT_ENOUGH_DATA or reply is False:
                await fill()
                continue
            if isinstance(reply, RedisConnectionError):  # e.g. LOADING: not a reply
                raise reply
            out.append(reply)
        return out
    for _ in range(count):
        try:
            out.append(await conn.read_response())
        except ResponseError as exc:  # an error reply; the others follow
            out.append(exc)
    return out


def _dropped(exc: BaseException) -> bool:
    """A closed connection (worth one retry on a new one), not a timeout."""
    return not isinstance(exc, TimeoutError | RedisTimeoutError)


def _refusal(
    outputs: Sequence[Output], counts: Sequence[int], replies: list[Any]
) -> WriteRefused | None:
    """None if MULTI ... EXEC ran every command; else what Redis refused, in its words,
    and what became of each output.

    Refusals at queueing time (OOM, NOPERM, READONLY) abort the whole transaction
    (EXECABORT): nothing ran, and outputs whose commands were all accepted are collateral.
    A command failing inside EXEC (WRONGTYPE) does not roll the others back. A refused MULTI
    (BUSY) leaves each command to run, or not, on its own.
    """
    multi, queued, done = replies[0], replies[1:-1], replies[-1]
    aborted = False
    if isinstance(multi, Exception):
        ran = queued
    elif isinstance(done, list):
        if not any(isinstance(r, Exception) for r in done):
            return None
        ran = done
    else:
        ran, aborted = queued, True  # EXECABORT, or EXEC itself refused
    errors = [
        r for r in (*replies, *(done if isinstance(done, list) else ())) if isinstance(r, Exception)
    ]
    words = _server_words(errors[0]) if errors else f"EXEC returned {done!r}"
    landed: list[Output] = []
    touched: list[Output] = []
    collateral: list[Output] = []
    blamed = False
    at = 0
    for out, count in zip(outputs, counts, strict=True):
        failed = sum(isinstance(r, Exception) for r in ran[at : at + count])
        at += count
        if aborted:
            blamed = blamed or failed > 0
            if not failed:
                collateral.append(out)
        elif not failed:
            landed.append(out)
        elif failed < count:
            touched.append(out)
    return WriteRefused(
        words,
        landed=landed,
        touched=touched,
        # when EXEC itself was refused, every output was
        collateral=collateral if blamed else (),
    )


def _server_words(error: Exception) -> str:
    """The error reply as the server wrote it (redis-py strips codes such as OOM)."""
    code = getattr(error, "status_code", None)
    text = str(error)
    return f"{code} {text}" if code and not text.startswith(code) else text


def _as_hash(reply: Any) -> dict[str, str] | Exception:
    if isinstance(reply, dict | Exception):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))  # RESP2: a flat list


class RedisInputReader:
    """Input hashes through the size-guarded read script (`inputs_io`), one call
    (EVALSHA_RO) per key, all of a chunk in one round trip; the script is loaded in the
    same round trip whenever the connection is new (it may be a restarted server) and
    after a NOSCRIPT."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        *,
        limits: InputLimits | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.client = client
        self.keys = keys
        self.limits = limits or InputLimits()
        self._wire = _Wire(client, timeout)
        self._calls: dict[str, tuple[bytes, bytes]] = {}
        self._use(READ_COMMANDS[0])

    def _use(self, command: str) -> None:
        """Per kind: `command` <sha> 1, then the key, then the script's ARGV (packed once)."""
        self.command = command
        for kind in ("marketstate", "risk", "position"):
            argv = self.limits.args(kind, "used")
            head = b"*%d\r\n" % (4 + len(argv)) + _bulk(command.encode())
            head += _bulk(READ_SHA.encode()) + _bulk(b"1")
            self._calls[kind] = (head, b"".join(_bulk(a.encode()) for a in argv))

    async def fetch(self, symbols: Sequence[str]) -> list[SymbolInputs]:
        keys = self.keys
        raw = await self._replies(self._payload(symbols), 3 * len(symbols))
        if symbols and unknown_command(raw[0]) and self.command != READ_COMMANDS[-1]:
            self._use(READ_COMMANDS[-1])  # a server without EVALSHA_RO (Redis 6.2)
            raw = await self._replies(self._payload(symbols), 3 * len(symbols))
        out = []
        for i, sym in enumerate(symbols):
            out.append(
                SymbolInputs(
                    sys.intern(sym),  # one string per symbol however often it is read
                    self._hash("marketstate", keys.marketstate, sym, raw[3 * i]),
                    self._hash("risk", keys.risk, sym, raw[3 * i + 1]),
                    self._hash("position", keys.position, sym, raw[3 * i + 2]),
                )
            )
        return out

    def _payload(self, symbols: Sequence[str]) -> bytes:
        keys = self.keys
        calls = self._calls
        parts = []
        for sym in symbols:
            for kind, key in (
                ("marketstate", keys.marketstate(sym)),
                ("risk", keys.risk(sym)),
                ("position", keys.position(sym)),
            ):
                head, argv = calls[kind]
                parts.append(head)
                parts.append(_bulk(key.encode()))
                parts.append(argv)
        return b"".join(parts)

    def _hash(self, kind: str, key_of: Callable[[str], str], sym: str, reply: Any) -> Hash | None:
        if reply is None:
            return None
        fields = decode_reply(kind, key_of(sym), reply, self.limits, "used")
        if isinstance(fields, Exception):
            # a WRONGTYPE reply is bad input for one symbol, not a reason to stop
            return read_error(kind, fields, "reading inputs")
        return fields

    async def _replies(self, body: bytes, count: int) -> list[Any]:
        kept = not self._wire.fresh
        try:
            try:
                raw = await self._roundtrip(body, count, load=not kept)
            except REDIS_ERRORS as exc:
                if not (kept and _dropped(exc)):
                    raise
                # the kept connection died while idle (CLIENT KILL, server restart):
                # reading is idempotent, so once more on a new connection
                raw = await self._roundtrip(body, count, load=True)
            if any(isinstance(reply, NoScriptError) for reply in raw):
                # the server forgot the script (SCRIPT FLUSH, a failover): load, read again
                raw = await self._roundtrip(body, count, load=True)
        except REDIS_ERRORS as exc:
            raise RedisUnavailable(f"reading inputs: {exc}") from exc
        return raw

    async def _roundtrip(self, body: bytes, count: int, *, load: bool) -> list[Any]:
        if not load:
            return await self._wire.roundtrip(body, count)
        raw = await self._wire.roundtrip(_LOAD_READ_SCRIPT + body, count + 1)
        if isinstance(raw[0], Exception):
            raise refused("loading the input read script (SCRIPT LOAD)", raw[0])
        return raw[1:]

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


class RedisSink:
    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        *,
        enable_stream: bool = True,
        stream_maxlen: int = 100_000,
        timeout: float = 5.0,
    ) -> None:
        self.client = client
        self.keys = keys
        self.enable_stream = enable_stream
        self.stream_maxlen = stream_maxlen
        self._wire = _Wire(client, timeout)
        self._multi_allowed = True  # as the startup permission check saw it (_exchange)
        # XADD <stream> MAXLEN ~ <n> * : the same for every entry
        self._xadd_head = (
            _bulk(b"XADD")
            + _bulk(keys.stream.encode())
            + _bulk(b"MAXLEN")
            + _bulk(b"~")
            + _bulk(str(stream_maxlen).encode())
            + _bulk(b"*")
        )

    async def write(self, outputs: Sequence[Output]) -> None:
        if not outputs:
            return
        for attempt in (1, 2):
            kept = not self._wire.fresh
            try:
                # a refusal (WriteRefused: OOM, READONLY, a stream key of another type...)
                # is Redis's answer, not a lost connection: it goes to the caller as is
                await self._transaction(outputs)
                return
            except REDIS_ERRORS as exc:
                failure: BaseException = exc
            # EXEC may or may not have run. Find out before anyone retries.
            try:
                landed = await self._landed(outputs[-1])
            except REDIS_OR_REPLY_ERRORS as exc:
                raise WriteUncertain(
                    f"transaction outcome unknown ({failure}); check failed: {exc}"
                ) from exc
            if landed:
                log.warning("transaction outcome was unknown (%s) but it landed", failure)
                return
            if attempt == 2 or not (kept and _dropped(failure)):
                break
            # it did not land and the kept connection had died while idle (CLIENT KILL,
            # server restart): a closed connection runs nothing later, so once more
        raise RedisUnavailable(f"writing proposals: {failure}") from failure

    async def landed(self, outputs: Sequence[Output]) -> bool:
        """Whether an earlier write whose outcome was unknown (WriteUncertain) got applied.

        A transaction is all or nothing, so its last output tells. Raises RedisUnavailable
        while Redis cannot answer.
        """
        try:
            return await self._landed(outputs[-1])
        except REDIS_ERRORS as exc:
            raise RedisUnavailable(f"checking an earlier write: {exc}") from exc

    async def _transaction(self, outputs: Sequence[Output]) -> None:
        """MULTI, then per output DEL (the whole hash is replaced: no stale foreign
        fields), HSET for a publish and XADD of its audit entry, then EXEC."""
        keys = self.keys
        stream = self.enable_stream
        parts = [_MULTI]
        counts: list[int] = []  # commands per output
        for out in outputs:
            first = len(parts)
            key = _bulk(keys.proposal(out.symbol).encode())
            parts.append(_DEL + key)
            if isinstance(out, PublishOut):
                n, pairs = _pairs(out.fields)
                parts.append(b"*%d\r\n$4\r\nHSET\r\n%b%b" % (2 + 2 * n, key, pairs))
                if stream:
                    # the audit entry is `event` followed by the hash's fields
                    parts.append(
                        b"*%d\r\n%b%b%b%b"
                        % (8 + 2 * n, self._xadd_head, _NAMES["event"], _bulk(b"publish"), pairs)
                    )
            elif stream:
                n, pairs = _pairs(out.audit_fields())
                parts.append(b"*%d\r\n%b%b" % (6 + 2 * n, self._xadd_head, pairs))
            counts.append(len(parts) - first)
        parts.append(_EXEC)
        replies = await self._exchange(parts)
        refusal = _refusal(outputs, counts, replies)
        if refusal is not None:
            raise refusal

    async def _exchange(self, parts: list[bytes]) -> list[Any]:
        """Send MULTI ... EXEC; its replies. A refused MULTI (the ACL changed under us)
        lets the commands after it run one by one: that one write counts as what ran (its
        replies tell), and until MULTI is accepted again it is sent alone first, with
        nothing following a refusal, so no later write runs without a transaction."""
        if self._multi_allowed:
            replies = await self._wire.roundtrip(b"".join(parts), len(parts))
        else:
            first = await self._wire.roundtrip(parts[0], 1)
            if isinstance(first[0], Exception):
                raise WriteRefused(_server_words(first[0]))  # nothing else was sent
            replies = first + await self._wire.roundtrip(b"".join(parts[1:]), len(parts) - 1)
        self._multi_allowed = not isinstance(replies[0], Exception)
        return replies

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
        except REDIS_OR_REPLY_ERRORS as exc:
            if "exec without multi" in str(exc).lower():  # how redis-py tells MULTI refused
                raise PermissionDenied("command multi while liveness write", str(exc)) from exc
            raise refused("liveness write", exc) from exc

    async def clear(self) -> None:
        try:
            await self.client.delete(self.key)
        except REDIS_OR_REPLY_ERRORS as exc:
            log.debug("liveness clear failed: %s", exc)
