"""The hot connections to Redis, owned outright: RESP2 over asyncio, parsed by hiredis.

redis-py's pipeline costs ~1 µs per argument and several µs per reply, and its fast
paths need its private parser. Here a connection is an `asyncio.Protocol` whose
`data_received` feeds a public `hiredis.Reader` and wakes the one waiting caller once
all its replies are in: one task switch per round trip, however many replies.

What callers can rely on:

* A round trip's replies are its own: a failure, timeout or cancellation mid-way closes
  the connection for good, and the next round trip opens a new one (lazily).
* A failure says whether the request was sent: `RedisUnavailable` (and its subclasses
  `AuthenticationFailed`, `PermissionDenied`) before anything was sent, so retrying is
  safe; `WriteUncertain`
  once it was (connection lost before all replies were read: it may or may not have run);
  `ReplyTimeout`, a `WriteUncertain`, when no reply came within the deadline (the server
  may still run it later).
* Error replies are returned, not raised, as `RedisReplyError` objects with `.code`.
* Strings are decoded as UTF-8 with U+FFFD for bad bytes: a producer writing other bytes
  must not crash the reader.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, Self, TypeAlias

import hiredis

from harvest_async.errors import (
    AuthenticationFailed,
    PermissionDenied,
    RedisReplyError,
    RedisUnavailable,
    ReplyTimeout,
    WriteUncertain,
)
from harvest_async.redis_io.sentinel import NotPrimary, connect_primary
from harvest_async.redis_io.wire_url import Endpoint, endpoint_from_url

__all__ = ["Endpoint", "Reply", "Subscriber", "Wire", "command", "endpoint_from_url"]

# A RESP2 reply as hiredis builds it; error replies are values, not exceptions raised.
Reply: TypeAlias = str | int | list["Reply"] | RedisReplyError | None

_MORE: Final = object()  # hiredis's "not enough data yet"
# hiredis moves its unread bytes to the front after each reply once 1 KiB is consumed, so
# a 256 KiB read is fed in slices: parsing it costs 30 % less (measured, bench/wire.py)
_SLICE: Final = 16384


def command(*args: str | bytes | int | float) -> bytes:
    """One command as RESP bytes (callers may concatenate several for one round trip)."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # its stub says 1-tuple
    return packed


class _Resp(asyncio.Protocol):
    """One connection: bytes in, replies parsed as they arrive, the waiter woken when
    `want` of them are in. Once `failure` is set the connection is unusable."""

    def __init__(self) -> None:
        self._hiredis = hiredis.Reader(
            replyError=RedisReplyError, encoding="utf-8", errors="replace", notEnoughData=_MORE
        )
        self.replies: list[Reply] = []
        self.want = 1
        self.waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.failure: BaseException | None = None
        self.timed_out = False
        self._loop = asyncio.get_running_loop()
        self._deadline = 0.0  # loop time by which the request in flight must be answered
        self._timer: asyncio.TimerHandle | None = None
        self.backlog: int | None = None  # subscriber: stop reading at this many unread
        self._paused = False
        self.switches = 0  # via Sentinel: the primary switches seen when it was opened

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        feed = self._hiredis.feed
        gets = self._hiredis.gets
        replies = self.replies
        size = len(data)
        try:
            for start in range(0, size, _SLICE):
                feed(data, start, min(_SLICE, size - start))
                reply = gets()
                while reply is not _MORE:
                    replies.append(reply)
                    reply = gets()
        except hiredis.ProtocolError as exc:
            self.fail(exc)
            return
        if len(replies) >= self.want:
            self._wake()
            backlog = self.backlog
            if backlog is not None and len(replies) >= backlog and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(exc or ConnectionResetError("connection closed by the server"))

    def fail(self, exc: BaseException) -> None:
        """Make the connection unusable (idempotent) and wake whoever waits on it."""
        if self.failure is None:
            self.failure = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def arm(self, timeout: float) -> None:
        """Give the request about to be sent `timeout` seconds to be answered.

        One timer per connection, re-armed only when it fires early: a round trip costs
        a clock read, not a call_later + cancel (3-5 µs, more than the rest of a small
        round trip's Python work).
        """
        self._deadline = deadline = self._loop.time() + timeout
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if self.waiter is None:  # idle: the next round trip arms it again
            return
        if self._loop.time() >= self._deadline:
            self.timed_out = True
            self.fail(TimeoutError("no reply in time"))
        else:  # armed by an earlier round trip: wait for this one's deadline
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)

    def take(self) -> list[Reply]:
        """The replies parsed so far, handed over without copying."""
        replies = self.replies
        self.replies = []
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return replies

    def _wake(self) -> None:
        # the waiter learns nothing from the future itself: it looks at `failure` and
        # `replies` (no exception is ever stored that nobody might retrieve)
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)


async def _exchange(conn: _Resp, payload: bytes, count: int) -> list[Reply]:
    """Write `payload` in one write and wait for `count` replies.

    Raises RedisUnavailable if the connection was already unusable (nothing sent),
    WriteUncertain/ReplyTimeout if it failed after the write. A cancellation closes it.
    """
    if conn.failure is not None or conn.transport is None:
        raise RedisUnavailable(f"connection closed: {conn.failure}")
    if conn.replies:  # something arrived unasked: the stream cannot be trusted
        conn.fail(ConnectionError("unexpected reply from the server"))
        raise RedisUnavailable("connection closed: unexpected reply from the server")
    try:
        conn.transport.write(payload)  # all or nothing: it buffers what the socket defers
    except (OSError, RuntimeError) as exc:  # a transport closed under us (uvloop raises)
        conn.fail(exc)
        raise RedisUnavailable(f"connection closed: {exc}") from exc
    waiter = asyncio.get_running_loop().create_future()
    conn.want = count
    conn.waiter = waiter
    try:
        await waiter
    except BaseException as exc:  # cancelled: the replies would be read by the next caller
        conn.fail(exc)
        raise
    received = len(conn.replies)
    if received == count:  # complete, even if the connection dropped right after
        return conn.take()
    if received > count:
        conn.fail(ConnectionError("more replies than requests"))
        raise WriteUncertain(f"{received} replies for {count} requests; connection closed")
    if conn.timed_out:
        raise ReplyTimeout("no reply in time; the request may still run") from conn.failure
    raise WriteUncertain(f"connection lost before the replies: {conn.failure}")


async def _connect(
    endpoint: Endpoint, name: str, subscribe: tuple[str, ...] = (), *, limit: float | None = None
) -> _Resp:
    """A connected, authenticated connection (and subscribed, if patterns are given);
    the whole of it within the endpoint's connect timeout, or `limit` if shorter."""
    if limit is None or limit > endpoint.connect_timeout:
        limit = endpoint.connect_timeout
    if endpoint.sentinel is None:
        return await _open(endpoint, name, subscribe, limit)

    async def attempt(primary: Endpoint, remaining: float) -> _Resp:
        return await _open(primary, name, subscribe, remaining, role=True)

    conn, switches = await connect_primary(endpoint, limit, attempt)
    conn.switches = switches
    return conn


async def _open(
    endpoint: Endpoint,
    name: str,
    subscribe: tuple[str, ...],
    limit: float,
    *,
    role: bool = False,
) -> _Resp:
    loop = asyncio.get_running_loop()
    conn = _Resp()
    where = endpoint.describe()
    try:
        async with asyncio.timeout(limit):
            if endpoint.path is not None:
                await loop.create_unix_connection(lambda: conn, endpoint.path)
            else:
                await loop.create_connection(
                    lambda: conn, endpoint.host, endpoint.port, ssl=endpoint.tls
                )
            await _handshake(conn, endpoint, name, role=role)
            if subscribe:
                await _subscribe(conn, subscribe)
    except BaseException as exc:
        conn.fail(exc)
        if isinstance(exc, PermissionDenied):  # names what the ACL refused: enough
            raise
        if isinstance(exc, RedisUnavailable):
            raise type(exc)(f"{where}: {exc}") from exc
        if isinstance(exc, TimeoutError):
            raise RedisUnavailable(f"{where}: no connection within {limit:g} s") from exc
        if isinstance(exc, OSError):  # refused, no such socket, TLS handshake, ...
            raise RedisUnavailable(f"{where}: {type(exc).__name__}: {exc}") from exc
        raise
    return conn


async def _handshake(conn: _Resp, endpoint: Endpoint, name: str, *, role: bool) -> None:
    """AUTH, SELECT, CLIENT SETNAME [, ROLE: must be the primary] in one write (RESP2)."""
    steps: list[tuple[str, bytes]] = []
    if endpoint.password is not None or endpoint.username is not None:
        credentials = (endpoint.username,) if endpoint.username is not None else ()
        steps.append(("AUTH", command("AUTH", *credentials, endpoint.password or "")))
    if endpoint.db:
        steps.append(("SELECT", command("SELECT", endpoint.db)))
    steps.append(("CLIENT SETNAME", command("CLIENT", "SETNAME", name)))
    if role:
        steps.append(("ROLE", command("ROLE")))
    try:
        replies = await _exchange(conn, b"".join(payload for _, payload in steps), len(steps))
    except WriteUncertain as exc:  # nothing of the caller's was sent yet
        raise RedisUnavailable(f"handshake: {exc}") from exc
    for (step, _), reply in zip(steps, replies, strict=True):
        if step == "ROLE":  # refused by the ACL: cannot tell, trust the sentinel
            if isinstance(reply, list) and reply and reply[0] != "master":
                raise NotPrimary(f"it answers ROLE as a {reply[0]}, not the primary")
            continue
        if not isinstance(reply, RedisReplyError):
            continue
        # any refusal of AUTH is about the credentials (WRONGPASS, or ERR when the server
        # has no password); NOAUTH: a password is required
        if step == "AUTH" or reply.code == "NOAUTH":
            raise AuthenticationFailed(f"Redis refused the credentials ({step}): {reply}")
        if reply.code == "NOPERM":  # the ACL user may not name its connection, ...
            raise PermissionDenied(f"command {step.lower().replace(' ', '|')}", str(reply))
        raise RedisUnavailable(f"Redis refused {step} ({reply.code}): {reply}") from reply


async def _subscribe(conn: _Resp, patterns: tuple[str, ...]) -> None:
    # one PSUBSCRIBE per pattern: a refused command has one error reply, not one per
    # pattern, so only this way is the number of replies known in advance
    payload = b"".join(command("PSUBSCRIBE", pattern) for pattern in patterns)
    try:
        confirmations = await _exchange(conn, payload, len(patterns))
    except WriteUncertain as exc:
        raise RedisUnavailable(f"subscribing: {exc}") from exc
    for pattern, reply in zip(patterns, confirmations, strict=True):
        if not isinstance(reply, RedisReplyError):
            continue
        if reply.code == "NOPERM":  # the ACL denies the command or the channels
            raise PermissionDenied(f"PSUBSCRIBE {pattern}", str(reply))
        raise RedisUnavailable(f"Redis refused PSUBSCRIBE ({reply.code}): {reply}") from reply


class Wire:
    """A connection kept for one hot path, opened on first use and after any failure.

    One round trip at a time (the caller serialises); `timeout` bounds each round trip
    from the write to the last reply, not each socket read.
    """

    def __init__(self, endpoint: Endpoint, *, name: str, timeout: float = 5.0) -> None:
        self.endpoint = endpoint
        self.name = name
        self.timeout = timeout
        self._conn: _Resp | None = None
        self._busy = False

    @property
    def fresh(self) -> bool:
        """True when the next round trip opens a new connection."""
        conn = self._conn
        return conn is None or conn.failure is not None or self._stale(conn)

    def _stale(self, conn: _Resp) -> bool:
        """Opened before a sentinel announced a new primary: it talks to the old one."""
        sentinels = self.endpoint.sentinel
        return sentinels is not None and conn.switches != sentinels.switches

    async def roundtrip(self, payload: bytes, replies: int) -> list[Reply]:
        """Send `payload` (packed commands, one write), return its `replies` replies.

        RedisUnavailable: nothing was sent. WriteUncertain / ReplyTimeout: it was sent
        and not all replies came back: the outcome is unknown. A connection the server
        closed while idle (CLIENT KILL, restart) is replaced before sending once the loop
        has seen it close; closed at the very moment of the write, it is a WriteUncertain
        on a connection that was not `fresh`.
        """
        if self._busy:
            raise RuntimeError("Wire.roundtrip called while another round trip is running")
        if replies < 1:
            raise ValueError("a round trip expects at least one reply")
        self._busy = True
        try:
            conn = self._conn
            if conn is None or conn.failure is not None or self._stale(conn):
                if conn is not None:
                    conn.fail(ConnectionAbortedError("the primary moved"))
                self._conn = None  # a connection the server closed while we were idle
                # a frozen server is noticed within the round trip's deadline here too
                conn = self._conn = await _connect(self.endpoint, self.name, limit=self.timeout)
            # the deadline aborts the connection, so the wait ends at once; cheaper than
            # a cancel scope or asyncio.timeout per round trip
            conn.arm(self.timeout)
            try:
                return await _exchange(conn, payload, replies)
            except (WriteUncertain, RedisUnavailable) as exc:
                raise type(exc)(f"{self.endpoint.describe()}: {self._why(exc)}") from exc
            finally:
                if conn.failure is not None:
                    self._conn = None
        finally:
            self._busy = False

    def _why(self, exc: BaseException) -> str:
        if isinstance(exc, ReplyTimeout):
            return f"no reply within {self.timeout:g} s; the request may still run"
        return str(exc)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.fail(ConnectionAbortedError("closed by the client"))
            self._conn = None

    def primary_lost(self) -> None:
        """The server answered READONLY: no longer the primary. Via Sentinel, that is news
        for every connection to the deployment (as a +switch-master is); then close."""
        sentinels, conn = self.endpoint.sentinel, self._conn
        if sentinels is not None and conn is not None and conn.switches == sentinels.switches:
            sentinels.switches += 1
        self.close()


class Subscriber:
    """A connection in subscribe mode: PSUBSCRIBE, then messages until it drops.

    Messages are hiredis's arrays as they are, e.g. `["pmessage", pattern, channel,
    event]`; nothing is copied or wrapped. It never reconnects by itself: a new
    subscription is the caller's decision (and a gap in what it has seen).
    """

    def __init__(self, conn: _Resp, where: str) -> None:
        self._conn = conn
        self._where = where

    @classmethod
    async def open(
        cls, endpoint: Endpoint, patterns: list[str], *, name: str, backlog: int = 50_000
    ) -> Self:
        """Connect and subscribe; RedisUnavailable (or AuthenticationFailed) if it fails.

        Reading from the socket pauses while `backlog` messages wait unread: a slow
        consumer makes the server hold them (and drop us past its output buffer limit,
        which the caller sees as a lost subscription), never this process's memory.
        """
        if not patterns:
            raise ValueError("Subscriber.open needs at least one pattern")
        conn = await _connect(endpoint, name, tuple(patterns))
        conn.backlog = backlog
        return cls(conn, endpoint.describe())

    async def read_batch(self) -> list[Any]:
        """Every message received so far, at least one; waits as long as it takes.

        Raises RedisUnavailable once the connection is lost and every message that came
        before has been returned.
        """
        conn = self._conn
        if not conn.replies:
            if conn.failure is None:
                waiter = asyncio.get_running_loop().create_future()
                conn.want = 1
                conn.waiter = waiter
                try:
                    await waiter
                finally:
                    conn.waiter = None
            if not conn.replies:
                raise RedisUnavailable(f"{self._where}: subscription lost: {conn.failure}")
        return conn.take()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> list[Any]:
        return await self.read_batch()

    def close(self) -> None:
        self._conn.fail(ConnectionAbortedError("closed by the client"))
