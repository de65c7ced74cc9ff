"""A tool's keyspace notifications on a Redis Cluster (`watch`): one pattern subscription
per primary, merged (`key_events.subscribed`), since a write is notified only on the node
that holds the key.

The slot map is read again when subscribing and then every `REFRESH_SEC` (every
`SUSPECT_EVERY` while a node is known lost): once it changes (a failover, a reshard, a
node added) the subscription yields None, and the caller subscribes again on the primaries
of the new map and re-reads everything. A primary lost (its subscription's connection, or
a read there) is noted in `lost` and the subscription yields None: the next one skips it
while it cannot be reached, and the caller marks only that node's keys stale. That one
yields None again once the map changes (its replica promoted) or the node answers again.
Only when no primary can be subscribed to does it raise.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import anyio

from harvest_async.clock import monotonic
from harvest_async.errors import RedisUnavailable
from harvest_async.redis_io.cluster.cluster_notifications import SUSPECT_EVERY, node_url
from harvest_async.redis_io.cluster.nodes import node_flags
from harvest_async.redis_io.cluster.topology import Address, SlotMap
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
        self.lost: set[Address] = set()  # primaries skipped by the current subscription

    @contextlib.asynccontextmanager
    async def subscribe(self, patterns: Sequence[str]) -> AsyncIterator[Messages]:
        await self.slots.refresh("watch: subscribing")
        seen = self.slots.version
        primaries = self.slots.primaries
        urls = [node_url(self.url, address) for address in primaries]
        self.lost = set()  # each primary tried again

        def lost(index: int, exc: BaseException) -> None:
            self.lost.add(primaries[index])
            self.slots.suspect()

        async def topology(send: Sender) -> None:
            await self._until_changed(seen)
            await send.send(None)

        try:
            async with subscribed(
                urls, self.password, patterns, self.name, also=topology, lost=lost
            ) as got:
                yield got
        except BaseException:
            self.slots.suspect()  # a node lost, maybe: read the map often for a while
            raise

    async def _until_changed(self, seen: int) -> None:
        """Until the map changes, or a primary lost when subscribing answers again."""
        last = monotonic()
        while self.slots.version == seen:
            await anyio.sleep(0.1)
            if self.lost and monotonic() - last >= SUSPECT_EVERY and await self._back():
                return
            suspect = monotonic() < self.slots.suspect_until
            if monotonic() - last >= (SUSPECT_EVERY if suspect else self.refresh_every):
                last = monotonic()
                with contextlib.suppress(RedisUnavailable):  # tried again next time
                    await self.slots.refresh("watch: periodic check")

    async def _back(self) -> bool:
        """Whether a lost primary answers again."""
        for address in list(self.lost):
            try:
                await node_flags(self.slots.endpoint(address), limit=1.0)
            except RedisUnavailable:
                continue
            return True
        return False

    def node_of(self, key: str) -> str:
        try:
            return _name(self.slots.node_of(key))
        except RedisUnavailable:  # its slot not served: no node to name
            return ""

    def lost_nodes(self) -> frozenset[str]:
        return frozenset(_name(a) for a in self.lost)

    def lose(self, node: str) -> None:
        for address in self.slots.primaries:
            if _name(address) == node:
                self.lost.add(address)
                self.slots.suspect()

    async def flags(self) -> dict[str, str | None]:
        """Every primary's notify-keyspace-events, by "host:port" (not the lost ones')."""
        out: dict[str, str | None] = {}
        for address in self.slots.primaries:
            if address in self.lost:
                continue
            endpoint = self.slots.endpoint(address)
            try:
                out[_name(address)] = await node_flags(endpoint, limit=self.slots.timeout)
            except RedisUnavailable:
                if address == self.slots.primaries[-1] and not out:
                    raise  # no primary answers: the cluster is unreachable
                self.lose(_name(address))
        return out


def _name(address: Address) -> str:
    return f"{address[0]}:{address[1]}"
