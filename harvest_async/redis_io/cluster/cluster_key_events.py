"""A tool's keyspace notifications on a Redis Cluster (`watch`): one pattern subscription
per primary, merged (`key_events.subscribed`), since a write is notified only on the node
that holds the key.

The slot map is read again when subscribing and then every `REFRESH_SEC` (every
`SUSPECT_EVERY` while a node is known lost): once it changes (a failover, a reshard, a
node added) the subscription yields None, and the caller subscribes again on the primaries
of the new map and re-reads everything. A primary's lost connection ends the subscription
with its error (the caller retries, with the map read again).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import anyio

from harvest_async.clock import monotonic
from harvest_async.errors import RedisUnavailable
from harvest_async.redis_io.cluster.cluster_notifications import SUSPECT_EVERY, node_url
from harvest_async.redis_io.cluster.nodes import node_flags
from harvest_async.redis_io.cluster.topology import SlotMap
from harvest_async.redis_io.key_events import Messages, Sender, subscribed

__all__ = ["ClusterKeyEvents"]

REFRESH_SEC = 5.0  # as the service's `ClusterSource`


class ClusterKeyEvents:
    """`KeyEvents` on a cluster (see the module)."""

    def __init__(
        self,
        url: str,
        password: str | None,
        slots: SlotMap,
        name: str = "harvest-async-watch",
        *,
        refresh_every: float = REFRESH_SEC,
    ) -> None:
        self.url = url
        self.password = password
        self.slots = slots
        self.name = name
        self.refresh_every = refresh_every

    @contextlib.asynccontextmanager
    async def subscribe(self, patterns: Sequence[str]) -> AsyncIterator[Messages]:
        await self.slots.refresh("watch: subscribing")
        seen = self.slots.version
        urls = [node_url(self.url, address) for address in self.slots.primaries]

        async def topology(send: Sender) -> None:
            await self._until_changed(seen)
            await send.send(None)

        try:
            async with subscribed(urls, self.password, patterns, self.name, also=topology) as got:
                yield got
        except BaseException:
            self.slots.suspect()  # a node lost, maybe: read the map often for a while
            raise

    async def _until_changed(self, seen: int) -> None:
        last = monotonic()
        while self.slots.version == seen:
            await anyio.sleep(0.1)
            suspect = monotonic() < self.slots.suspect_until
            if monotonic() - last >= (SUSPECT_EVERY if suspect else self.refresh_every):
                last = monotonic()
                with contextlib.suppress(RedisUnavailable):  # tried again next time
                    await self.slots.refresh("watch: periodic check")

    async def flags(self) -> dict[str, str | None]:
        """Every primary's notify-keyspace-events, by "host:port"."""
        out: dict[str, str | None] = {}
        for address in self.slots.primaries:
            endpoint = self.slots.endpoint(address)
            out[f"{address[0]}:{address[1]}"] = await node_flags(endpoint, limit=self.slots.timeout)
        return out
