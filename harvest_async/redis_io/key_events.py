"""Keyspace notifications for the tools (`watch`): pattern subscriptions as one stream.

`ServerKeyEvents` subscribes on the one server; `cluster.cluster_key_events` subscribes on
every primary of a cluster (notifications are node-local) through the same `subscribed`
merge. A subscription yields a receive stream of `(channel, data)` for each pmessage, and
`None` when the subscriptions no longer cover every key (a cluster's topology changed):
the caller subscribes again and re-reads everything, as after a gap.

A cluster's subscription tolerates a lost primary (`lost`): its keys are unwatched, and
`node_of`/`lost_nodes` let the caller mark only what that node holds as stale.
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

    def node_of(self, key: str) -> str:
        """The node holding `key`, as "host:port" ("" on one server)."""
        ...

    def lost_nodes(self) -> frozenset[str]:
        """The nodes lost while the others are watched (none on one server)."""
        ...

    def lose(self, node: str) -> None:
        """`node` failed a read: treated as lost until the next subscription."""
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


Lost = Callable[[int, BaseException], None]


async def _pump(pubsub: Any, send: Sender, index: int, lost: Lost | None) -> None:
    try:
        while True:
            msg = await pubsub.get_message(timeout=None)
            if msg is not None and msg.get("type") == "pmessage":
                await send.send((str(msg["channel"]), str(msg.get("data"))))
    except REDIS_ERRORS as exc:
        if lost is None:
            raise
        lost(index, exc)
        await send.send(None)  # subscribe again: the lost node skipped, the others kept


@contextlib.asynccontextmanager
async def subscribed(
    urls: Sequence[str],
    password: str | None,
    patterns: Sequence[str],
    name: str,
    *,
    also: Callable[[Sender], Coroutine[Any, Any, None]] | None = None,
    lost: Lost | None = None,
) -> AsyncIterator[Messages]:
    """Subscribed to `patterns` on each server of `urls` (all of them before this
    yields: nothing written afterwards is missed); their pmessages merged. `also` runs
    beside the readers (a topology watch sending None). A lost connection raises; with
    `lost`, it is reported (the url's index) instead: a server that cannot be subscribed
    to is skipped (unless none can), one lost later sends None."""
    send, receive = anyio.create_memory_object_stream[Message](BUFFER)
    async with send, receive, contextlib.AsyncExitStack() as stack:
        pubsubs: list[tuple[int, Any]] = []
        for index, url in enumerate(urls):
            try:
                pubsubs.append(
                    (
                        index,
                        await stack.enter_async_context(
                            _pattern_subscription(url, password, patterns, name)
                        ),
                    )
                )
            except REDIS_ERRORS as exc:
                if lost is None or (not pubsubs and index == len(urls) - 1):
                    raise
                lost(index, exc)
        async with anyio.create_task_group() as tg:
            for index, pubsub in pubsubs:
                tg.start_soon(_pump, pubsub, send, index, lost)
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

    def node_of(self, key: str) -> str:
        return ""

    def lost_nodes(self) -> frozenset[str]:
        return frozenset()  # one server: lost means Redis unreachable

    def lose(self, node: str) -> None:
        return
