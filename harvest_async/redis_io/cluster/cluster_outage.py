"""A Redis Cluster's outage, node by node (docs/operations.md, "Redis Cluster").

On one server every reconnect loop reports to one `RedisOutage`: a WARNING when it
starts, an INFO when it ends. On a cluster a lost node is seen by its listener, by the
reads and by the writes of the keys it served (and by nobody else): `ClusterOutage`
reports it as that node's loss, once, whoever sees it first (a WARNING naming the node),
and its end once no node is lost any more: the node answers again, or the slot map no
longer names it as a primary (its replica promoted; `ClusterSource` says so) — one INFO
with the duration. A failure that names no node while none is lost (every node
unreachable) is the one-server outage, logged as on one server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from harvest_async.backoff import RedisOutage
from harvest_async.clock import monotonic
from harvest_async.redis_io.cluster.topology import Address, SlotMap

__all__ = ["ClusterOutage", "NodeOutage"]


def _name(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


class ClusterOutage(RedisOutage):
    """The outage shared by a cluster's reconnect loops (see the module)."""

    def __init__(
        self,
        where: str,
        logger: logging.Logger,
        slots: SlotMap,
        *,
        remind_every: float = 60.0,
        now: Callable[[], float] = monotonic,
    ) -> None:
        super().__init__(where, logger, remind_every=remind_every, now=now)
        self.slots = slots
        self.lost: dict[Address, float] = {}  # node -> when its loss was last reminded
        self.nodes_since: float | None = None  # the first loss of the nodes' outage
        self.node_outages = 0  # nodes' outages so far (tests)
        self._ends: list[str] = []  # how each lost node's loss ended, for the INFO

    def node(self, address: Address) -> NodeOutage:
        """The outage as seen by a loop that talks to `address` only."""
        return NodeOutage(self, address)

    def failed(self, member: str, detail: str, *, node: Address | None = None) -> None:
        now = self._now()
        if node is None:
            if self.lost:  # the lost node's doing, already said
                self.log.debug("Redis Cluster: %s failed (%s) while a node is lost", member, detail)
            else:
                super().failed(member, detail)
            return
        if node in self.lost:
            if now - self.lost[node] >= self.remind_every:
                self.lost[node] = now
                assert self.nodes_since is not None
                self.log.warning(
                    "Redis Cluster node %s still lost after %.0f s (%s: %s)",
                    _name(node),
                    now - self.nodes_since,
                    member,
                    detail,
                )
            else:
                self.log.debug(
                    "Redis Cluster node %s still lost (%s: %s)", _name(node), member, detail
                )
            return
        if node not in self.slots.primaries:
            # a route the map has dropped already (its slots are served elsewhere now)
            self.log.debug("Redis Cluster: %s failed at former primary %s", member, _name(node))
            return
        if self.nodes_since is None:
            self.nodes_since = now
            self.node_outages += 1
            self._ends = []
        self.lost[node] = now
        self.slots.suspect()  # its replica may be promoted within seconds: watch the map
        self.log.warning(
            "Redis Cluster node %s lost (%s: %s); its slots wait for it or for its replica's "
            "promotion, the other nodes' are served",
            _name(node),
            member,
            detail,
            extra={"event": "node_lost", "node": _name(node)},
        )

    def node_back(self, address: Address) -> None:
        """`address` answered again."""
        if self.lost.pop(address, None) is not None:
            self._ends.append(f"{_name(address)} answers again")
            self._served()

    def primaries_changed(self, primaries: Sequence[Address], replaced: dict[Address, str]) -> None:
        """The slot map now names `primaries`; `replaced`: a lost node's slots -> the
        node(s) now serving them (for the INFO)."""
        for address in [a for a in self.lost if a not in primaries]:
            del self.lost[address]
            by = replaced.get(address)
            self._ends.append(f"{_name(address)} replaced by {by}" if by else _name(address))
        self._served()

    def _served(self) -> None:
        if self.lost or self.nodes_since is None:
            return
        took = self._now() - self.nodes_since
        self.log.info(
            "Redis Cluster: every slot served again after %.1f s (%s)",
            took,
            "; ".join(self._ends),
            extra={"event": "outage_end", "duration_sec": round(took, 3)},
        )
        self.nodes_since = None
        self.wake()


class NodeOutage(RedisOutage):
    """One node's view of a `ClusterOutage`, for its listener and its streams' readers."""

    def __init__(self, cluster: ClusterOutage, address: Address) -> None:
        super().__init__(_name(address), cluster.log, remind_every=cluster.remind_every)
        self.cluster = cluster
        self.address = address

    @property
    def active(self) -> bool:
        return self.address in self.cluster.lost

    def failed(self, member: str, detail: str, *, node: Address | None = None) -> None:
        self.cluster.failed(member, detail, node=node or self.address)

    def recovered(self, member: str) -> None:
        self.cluster.node_back(self.address)

    async def pause(self, delay: float) -> bool:
        return await self.cluster.pause(delay)
