"""Input streams (INPUT_STREAMS) on a Redis Cluster: each read on the primary serving it.

One XREAD over streams in several slots is refused (CROSSSLOT), even on one node, so
the streams are grouped by slot and each group is followed by a `StreamFollower` of its
own (one connection each; streams sharing a hash tag share one XREAD). A group follows
its slot: when the slot map says another primary serves it (a failover, a reshard; the
node's MOVED reply makes the map be read at once), the group's reader moves there and
resumes after the last entry it read, and the move is a gap, as a reconnect is on one
server. The streams are read independently of the keyspace listeners: a stream moving
costs no resubscription.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import anyio

from harvest_async.backoff import Backoff, DenialLog, RedisOutage
from harvest_async.core.ports import Event, Gap
from harvest_async.errors import RedisUnavailable
from harvest_async.redis_io.cluster.topology import Address, SlotMap, slot_of
from harvest_async.redis_io.input_streams import StreamFollower

__all__ = ["ClusterStreams", "by_slot"]

log = logging.getLogger(__name__)


def by_slot(streams: Sequence[str]) -> list[tuple[str, ...]]:
    """The streams grouped by slot (the groups one XREAD each may read), in order."""
    groups: dict[int, list[str]] = {}
    for stream in dict.fromkeys(streams):
        groups.setdefault(slot_of(stream), []).append(stream)
    return [tuple(group) for group in groups.values()]


class ClusterStreams:
    """The input streams of a cluster (see the module); `url_of` gives a node's URL."""

    def __init__(
        self,
        password: str | None,
        streams: Sequence[str],
        slots: SlotMap,
        *,
        url_of: Callable[[Address], str],
        outage_of: Callable[[Address], RedisOutage] | None = None,
    ) -> None:
        """`outage_of`: the outage a node's readers report to (`ClusterOutage.node`)."""
        self.password = password
        self.groups = by_slot(streams)
        self.slots = slots
        self.url_of = url_of
        # one node down is not "Redis unavailable" for the service
        self.outage_of = outage_of or (lambda a: RedisOutage(f"{a[0]}:{a[1]}", log))
        self.last: dict[str, str] = {}  # stream -> the last ID read, whatever the node
        self.moves = 0  # times a group followed its slot to another node (tests)
        self._denials = DenialLog(log)

    async def run(self, emit: Callable[[Event], None]) -> None:
        async with anyio.create_task_group() as tg:
            for group in self.groups:
                tg.start_soon(self._follow, group, emit)

    async def _follow(self, group: tuple[str, ...], emit: Callable[[Event], None]) -> None:
        """One slot's streams, on whichever primary serves the slot."""
        previous: Address | None = None
        waits = Backoff(first=0.1, cap=2.0)  # for a slot that is not served, or migrating
        while True:
            version = self.slots.version
            try:
                address = self.slots.node_of(group[0])
            except RedisUnavailable:  # no primary serves it yet (a failover under way)
                self.slots.suspect()
                await self._map_changed(version, waits.next_delay())
                continue
            if previous is not None and address != previous:
                self.moves += 1
                log.info(
                    "input streams %s now served by %s:%d; resuming after the last entry read",
                    ", ".join(group),
                    *address,
                )
                emit(Gap("input stream moved"))
            previous = address
            follower = StreamFollower(
                self.url_of(address),
                self.password,
                group,
                last=self.last,
                outage=self.outage_of(address),
                denials=self._denials,
                redirects=True,
                on_failure=self.slots.suspect,
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._until_moved, group, address, tg.cancel_scope)
                await follower.run(emit)
                tg.cancel_scope.cancel()  # it returned: the node redirected it
            if self._moved_away(group, address):  # the map moved the slot: follow it
                waits.reset()
                continue
            # redirected: read the map now; if it still names this node (a migration
            # under way), wait a little before asking the node again
            try:
                if not await self.slots.refresh("input stream redirected"):
                    await self._map_changed(self.slots.version, waits.next_delay())
            except RedisUnavailable as exc:
                log.debug("cluster: reading the slot map failed: %s", exc)
                await anyio.sleep(waits.next_delay())

    async def _until_moved(
        self, group: tuple[str, ...], address: Address, scope: anyio.CancelScope
    ) -> None:
        """Cancel `scope` once the map says another node (or none) serves the group."""
        while not self._moved_away(group, address):
            await self._map_changed(self.slots.version, None)
        scope.cancel()

    def _moved_away(self, group: tuple[str, ...], address: Address) -> bool:
        try:
            return self.slots.node_of(group[0]) != address
        except RedisUnavailable:
            return True

    async def _map_changed(self, version: int, limit: float | None) -> None:
        """Until the map's version moves past `version` (refreshed by the cluster's
        source, reader and sink), or `limit` seconds."""
        with anyio.move_on_after(limit if limit is not None else float("inf")):
            while True:  # polled, as `ClusterSource` does: the map has no change event
                if self.slots.version != version:
                    return
                await anyio.sleep(0.1)
