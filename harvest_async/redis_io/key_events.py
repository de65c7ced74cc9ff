"""Keyspace notifications for the tools (`watch`): pattern subscriptions as one stream.

`ServerKeyEvents` subscribes on the one server; `cluster.cluster_key_events` subscribes on
every primary of a cluster (notifications are node-local) through the same `subscribed`
merge. A subscription yields a receive stream of `(channel, data)` for each pmessage, and
`None` when the subscriptions no longer cover every key (a cluster's topology changed):
the caller subscribes again and re-reads everything, as after a gap.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, Protocol

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from harvest_async.redis_io.client import REDIS_ERRORS, Client, client_for
from harvest_async.redis_io.notifications import read_notify_flags

__all__ = ["KeyEvents", "Message", "Messages", "ServerKeyEvents", "subscribed"]

Message = tuple[str, str] | None  # (channel, data); None: subscribe again and re-read all
Messages = MemoryObjectReceiveStream[Message]
Sender = MemoryObjectSendStream[Message]
# pmessages waiting for the consumer before the node's reader waits (and the socket fills)
BUFFER = 1000


class KeyEvents(Protocol):
    """Where a tool's keyspace notifications and notify-keyspace-events come from."""

    def subscribe(
        self, patterns: Sequence[str]
    ) -> contextlib.AbstractAsyncContextManager[Messages]:
        """Subscribed to `patterns` (on every node needed) once entered."""
        ...

    async def flags(self) -> dict[str, str | None]:
        """notify-keyspace-events of each node ("" names the one server; a value of
        None: CONFIG GET not allowed)."""
        ...


@contextlib.asynccontextmanager
async def _pattern_subscription(
    url: str, password: str | None, patterns: Sequence[str], name: str
) -> AsyncIterator[Any]:
    sub = client_for(url, password, retries=0, socket_timeout=None, name=name)
    pubsub = sub.pubsub()
    try:
        await pubsub.psubscribe(*patterns)
        yield pubsub
    finally:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(*REDIS_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                await sub.aclose()


async def _pump(pubsub: Any, send: Sender) -> None:
    while True:
        msg = await pubsub.get_message(timeout=None)
        if msg is not None and msg.get("type") == "pmessage":
            await send.send((str(msg["channel"]), str(msg.get("data"))))


@contextlib.asynccontextmanager
async def subscribed(
    urls: Sequence[str],
    password: str | None,
    patterns: Sequence[str],
    name: str,
    *,
    also: Callable[[Sender], Coroutine[Any, Any, None]] | None = None,
) -> AsyncIterator[Messages]:
    """Subscribed to `patterns` on each server of `urls` (all of them before this
    yields: nothing written afterwards is missed); their pmessages merged. `also` runs
    beside the readers (a topology watch sending None). A lost connection raises."""
    send, receive = anyio.create_memory_object_stream[Message](BUFFER)
    async with send, receive, contextlib.AsyncExitStack() as stack:
        pubsubs = [
            await stack.enter_async_context(_pattern_subscription(url, password, patterns, name))
            for url in urls
        ]
        async with anyio.create_task_group() as tg:
            for pubsub in pubsubs:
                tg.start_soon(_pump, pubsub, send)
            if also is not None:
                tg.start_soon(also, send)
            try:
                yield receive
            finally:
                tg.cancel_scope.cancel()


class ServerKeyEvents:
    """One server's notifications (a Sentinel URL: its current primary)."""

    def __init__(
        self, client: Client, url: str, password: str | None, name: str = "harvest-async-watch"
    ) -> None:
        self.client = client
        self.url = url
        self.password = password
        self.name = name

    def subscribe(
        self, patterns: Sequence[str]
    ) -> contextlib.AbstractAsyncContextManager[Messages]:
        return subscribed([self.url], self.password, patterns, self.name)

    async def flags(self) -> dict[str, str | None]:
        return {"": await read_notify_flags(self.client)}
