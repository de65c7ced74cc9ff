"""Asking Redis Sentinel where the primary is, and hearing when it moves (INTERFACE §7).

`ask_primary` asks the sentinels in turn (SENTINEL GET-MASTER-ADDR-BY-NAME), the one
that answered last first. Its answer may be stale (a sentinel that has not yet seen a
failover names the old primary, now a replica): the wire confirms it with ROLE on the
connection it opens, and asks again. `watch_switches` follows one sentinel's
`+switch-master` announcements: the moment a failover is done, not when a write first
fails on the demoted server.

Cold paths (a connect, a failover), on short connections of their own: RESP2 over asyncio
streams, parsed by hiredis; the wire's connections are for the hot paths.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import hiredis

from harvest_async.errors import AuthenticationFailed, RedisReplyError, RedisUnavailable
from harvest_async.redis_io.wire_url import Endpoint, Sentinels

__all__ = ["NotPrimary", "ask_primary", "ask_replicas", "connect_primary", "watch_switches"]

log = logging.getLogger(__name__)

C = TypeVar("C")


class NotPrimary(RedisUnavailable):
    """The server a sentinel named answers ROLE as a replica."""


class _Conn:
    """One connection to a sentinel: commands in, replies out (error replies as values)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._stream_in = reader
        self._stream_out = writer
        self._replies = hiredis.Reader(replyError=RedisReplyError, encoding="utf-8")

    @classmethod
    async def open(cls, sentinels: Sentinels, host: str, port: int) -> _Conn:
        # rediss+sentinel://: the sentinels are verified as the data nodes are
        reader, writer = await asyncio.open_connection(host, port, ssl=sentinels.tls)
        conn = cls(reader, writer)
        if sentinels.password is not None:
            user = (sentinels.username,) if sentinels.username is not None else ()
            reply = await conn.call("AUTH", *user, sentinels.password)
            if isinstance(reply, RedisReplyError):
                conn.close()
                raise AuthenticationFailed(f"sentinel {host}:{port} refused AUTH: {reply}")
        return conn

    async def call(self, *args: str) -> Any:
        self._stream_out.write(hiredis.pack_command(args))  # type: ignore[arg-type]
        return await self.next()

    async def next(self) -> Any:
        while True:
            reply = self._replies.gets()
            if reply is not False:
                return reply
            data = await self._stream_in.read(65536)
            if not data:
                raise ConnectionResetError("connection closed by the sentinel")
            self._replies.feed(data)

    def close(self) -> None:
        self._stream_out.close()


def _order(sentinels: Sentinels) -> list[int]:
    count = len(sentinels.addresses)
    return [(sentinels.first + i) % count for i in range(count)]


async def ask_primary(
    sentinels: Sentinels, budget: float, *, skip: int | None = None
) -> tuple[str, int]:
    """(host, port) of the primary as the first sentinel that knows says; `skip`: the
    index of a sentinel whose answer just proved stale (asked last this time).

    RedisUnavailable when no sentinel answers within `budget` s (each gets a share) or
    none knows the service; AuthenticationFailed when a sentinel refuses the credentials.
    """
    order = _order(sentinels)
    if skip is not None and len(order) > 1:
        order.remove(skip)
        order.append(skip)
    share = max(budget / len(order), 0.2)
    problems: list[str] = []
    demoted: tuple[str, int] | None = None
    for index in order:
        host, port = sentinels.addresses[index]
        try:
            async with asyncio.timeout(share):
                conn = await _Conn.open(sentinels, host, port)
                try:
                    reply = await conn.call(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", sentinels.service
                    )
                finally:
                    conn.close()
        except AuthenticationFailed:
            raise
        except (OSError, TimeoutError, hiredis.ProtocolError) as exc:
            problems.append(f"{host}:{port}: {type(exc).__name__} {exc}".rstrip())
            continue
        if isinstance(reply, list) and len(reply) == 2 and str(reply[1]).isdigit():
            address = str(reply[0]), int(reply[1])
            if address == sentinels.demoted:  # not told of the failover yet: the next one
                demoted = address
                problems.append(f"{host}:{port} names the demoted primary")
                continue
            sentinels.first = index
            return address
        problems.append(
            f"{host}:{port}: {reply}"
            if isinstance(reply, RedisReplyError)
            else f"{host}:{port} does not know {sentinels.service!r}"
        )
    if demoted is not None:
        return demoted  # every one that answered names it: it is the primary again
    raise RedisUnavailable(
        f"no sentinel named the primary of {sentinels.service!r} ({'; '.join(problems)})"
    )


async def ask_replicas(sentinels: Sentinels, budget: float) -> list[tuple[str, int]]:
    """The replicas the first sentinel that answers knows for the service (SENTINEL
    REPLICAS), those it does not believe down (for `doctor`)."""
    problems: list[str] = []
    for index in _order(sentinels):
        host, port = sentinels.addresses[index]
        try:
            async with asyncio.timeout(max(budget / len(sentinels.addresses), 0.2)):
                conn = await _Conn.open(sentinels, host, port)
                try:
                    reply = await conn.call("SENTINEL", "REPLICAS", sentinels.service)
                finally:
                    conn.close()
        except (OSError, TimeoutError, hiredis.ProtocolError) as exc:
            problems.append(f"{host}:{port}: {type(exc).__name__} {exc}".rstrip())
            continue
        if not isinstance(reply, list):
            problems.append(f"{host}:{port}: {reply}")
            continue
        found = []
        for flat in reply:
            fields = dict(zip(flat[::2], flat[1::2], strict=False))
            flags = str(fields.get("flags", "")).split(",")
            if "s_down" not in flags and "o_down" not in flags and fields.get("port"):
                found.append((str(fields.get("ip")), int(fields["port"])))
        return found
    raise RedisUnavailable(f"no sentinel listed the replicas ({'; '.join(problems)})")


async def connect_primary(
    endpoint: Endpoint, limit: float, attempt: Callable[[Endpoint, float], Awaitable[C]]
) -> tuple[C, int]:
    """(`attempt`'s connection to the primary the sentinels name, `switches` when it was
    asked for). `attempt` confirms it with ROLE (NotPrimary otherwise): a sentinel that
    has not seen a failover yet names the old primary, a replica now, and during the
    switch there may be none; asked again, that sentinel last, until `limit`."""
    sentinels = endpoint.sentinel
    assert sentinels is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    stale: int | None = None
    while True:
        switches = sentinels.switches
        host, port = await ask_primary(sentinels, max(deadline - loop.time(), 0.2), skip=stale)
        try:
            conn = await attempt(endpoint.at(host, port), deadline - loop.time())
            log.debug("primary of %r at %s:%d", sentinels.service, host, port)
            return conn, switches
        except NotPrimary as exc:
            log.debug("%s:%d named by a sentinel is not the primary: %s", host, port, exc)
            if loop.time() + 0.05 >= deadline:
                raise RedisUnavailable(f"{endpoint.describe()}: {exc}") from exc
            stale = sentinels.first
            await asyncio.sleep(0.05)


async def watch_switches(
    sentinels: Sentinels, on_switch: Callable[[str, str], None], *, retry: float = 1.0
) -> None:
    """Follow `+switch-master` for our service, forever (cancel to stop): each one bumps
    `sentinels.switches` (so connections to the old primary are replaced) and calls
    `on_switch(old, new)` with the addresses as "host:port". A lost sentinel connection
    moves on to the next sentinel; a failover announced meanwhile is seen by the wire
    anyway (connection loss, READONLY) and confirmed by ROLE."""
    while True:
        for index in _order(sentinels):
            host, port = sentinels.addresses[index]
            try:
                await _follow(sentinels, host, port, on_switch)
            except (OSError, TimeoutError, hiredis.ProtocolError, RedisUnavailable) as exc:
                log.debug("sentinel %s:%d: %s; following the next one", host, port, exc)
        await asyncio.sleep(retry)  # every sentinel failed: do not spin


async def _follow(
    sentinels: Sentinels, host: str, port: int, on_switch: Callable[[str, str], None]
) -> None:
    async with asyncio.timeout(max(1.0, 0.5 * len(sentinels.addresses))):
        conn = await _Conn.open(sentinels, host, port)
    try:
        async with asyncio.timeout(5.0):
            confirmed = await conn.call("SUBSCRIBE", "+switch-master")
        if isinstance(confirmed, RedisReplyError):
            raise RedisUnavailable(f"SUBSCRIBE +switch-master refused: {confirmed}")
        while True:
            message = await conn.next()
            # ["message", "+switch-master", "<name> <old-ip> <old-port> <new-ip> <new-port>"]
            if not (isinstance(message, list) and len(message) == 3 and message[0] == "message"):
                continue
            words = str(message[2]).split()
            if len(words) == 5 and words[0] == sentinels.service and words[2].isdigit():
                sentinels.demoted = (words[1], int(words[2]))
                sentinels.switches += 1
                on_switch(f"{words[1]}:{words[2]}", f"{words[3]}:{words[4]}")
    finally:
        conn.close()
