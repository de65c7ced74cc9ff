"""Redis Cluster topology: which primary serves which of the 16384 slots (INTERFACE §7).

`SlotMap` is shared by the cluster's reader, sink and notification source. It is read
from CLUSTER SLOTS (Redis 6.2+, Valkey) on the first node that answers (the URL's node
first, then the primaries known so far) and refreshed on MOVED, on a lost connection and
periodically (`ClusterSource`); every refresh that changes the map bumps `version` and
adds the slots whose owner changed to those `take_moved` hands the source, which reports
them as a gap for the symbols with a key there (a scoped resync). A key's slot is CRC16
of its hash tag (the part inside the first non-empty `{...}`) or of the whole key, as the
server computes it (`core.slots.key_slot`, the same as redis-py's `redis.crc.key_slot`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio

from harvest_async.clock import monotonic
from harvest_async.core.slots import SLOTS, key_slot
from harvest_async.errors import PermissionDenied, RedisReplyError, RedisUnavailable
from harvest_async.redis_io.client import is_permission_error
from harvest_async.redis_io.wire import Endpoint, Reply, Wire, command

__all__ = [
    "SLOTS",
    "Address",
    "SlotMap",
    "changed_slots",
    "cluster_state",
    "is_cluster",
    "slot_of",
]

log = logging.getLogger(__name__)

Address = tuple[str, int]


def slot_of(key: str) -> int:
    return key_slot(key)


def changed_slots(
    before: Sequence[Address | None], after: Sequence[Address | None]
) -> frozenset[int]:
    """The slots whose owner differs between two slot → primary maps (None: not served)."""
    return frozenset(i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b)


async def is_cluster(endpoint: Endpoint, *, limit: float = 5.0) -> bool:
    """Whether the server at `endpoint` runs in cluster mode (False if it cannot tell)."""
    return bool(await cluster_state(endpoint, limit=limit))


async def cluster_state(endpoint: Endpoint, *, limit: float = 5.0) -> bool | None:
    """Whether the server at `endpoint` runs in cluster mode: INFO cluster, else (an ACL
    user without INFO) CLUSTER SLOTS, an error on one server; None when the ACL allows
    neither."""
    wire = Wire(endpoint, name="harvest-async-check", timeout=limit)
    try:
        (info,) = await wire.roundtrip(command("INFO", "cluster"), 1)
        if not (isinstance(info, RedisReplyError) and is_permission_error(str(info))):
            return isinstance(info, str) and "cluster_enabled:1" in info
        (slots,) = await wire.roundtrip(command("CLUSTER", "SLOTS"), 1)
    finally:
        wire.close()
    if isinstance(slots, RedisReplyError) and is_permission_error(str(slots)):
        return None
    return isinstance(slots, list)


class SlotMap:
    """The slot → primary map of one cluster, and the endpoints to reach its nodes."""

    def __init__(self, seed: Endpoint, *, timeout: float = 5.0) -> None:
        self.seed = seed
        self.timeout = timeout
        self.version = 0  # bumped by every refresh that changed the map
        self.moved_slots = 0  # slots whose owner changed, summed over the refreshes
        self._moved: set[int] = set()  # slots whose owner changed since `take_moved`
        # monotonic time until which the map is re-read often: a node was lost, and the
        # cluster may be promoting its replica (node timeout + election: seconds)
        self.suspect_until = 0.0
        self._owner: list[Address | None] = [None] * SLOTS
        self._primaries: tuple[Address, ...] = ()
        self._replicas: tuple[Address, ...] = ()
        self._lock = anyio.Lock()

    # -- lookups ---------------------------------------------------------------------------
    @property
    def primaries(self) -> tuple[Address, ...]:
        return self._primaries

    @property
    def replicas(self) -> tuple[Address, ...]:
        """The replicas CLUSTER SLOTS listed when the map was read last (the startup ACL
        check probes them: a failover promotes one)."""
        return self._replicas

    @property
    def ready(self) -> bool:
        return bool(self._primaries)

    def node_of(self, key: str) -> Address:
        owner = self._owner[slot_of(key)]
        if owner is None:
            raise RedisUnavailable(f"cluster: slot {slot_of(key)} ({key}) is not served")
        return owner

    def owners(self) -> tuple[Address | None, ...]:
        """The slot -> primary map as read last (a copy)."""
        return tuple(self._owner)

    def served(self, address: Address) -> frozenset[int]:
        """The slots `address` serves by the map as read last."""
        return frozenset(i for i, owner in enumerate(self._owner) if owner == address)

    def suspect(self, seconds: float = 20.0) -> None:
        """A node could not be reached: watch the map closely for a while."""
        self.suspect_until = max(self.suspect_until, monotonic() + seconds)

    def endpoint(self, address: Address) -> Endpoint:
        """The URL's credentials and TLS, at another node's address."""
        return self.seed.at(*address)

    # -- refresh ---------------------------------------------------------------------------
    async def refresh(self, why: str = "") -> bool:
        """Read the map again; True if it changed. Concurrent callers share one refresh.
        RedisUnavailable when no known node answers."""
        seen = self.version
        async with self._lock:
            if self.version != seen:
                return True  # another caller refreshed it meanwhile
            slots, self._replicas = await self._ask()
            owner: list[Address | None] = [None] * SLOTS
            for first, last, address in slots:
                owner[first : last + 1] = [address] * (last - first + 1)
            if owner == self._owner:
                return False
            moved = changed_slots(self._owner, owner)
            self.moved_slots += len(moved)
            self._moved |= moved
            self._owner = owner
            self._primaries = tuple(sorted({a for a in owner if a is not None}))
            self.version += 1
            # one INFO line per change the service acts on: `ClusterSource` logs it
            log.debug("cluster slot map read (%s): %d slots have a new owner", why, len(moved))
            return True

    def take_moved(self) -> frozenset[int]:
        """The slots whose owner changed since the last call (or since the first read),
        including those that changed and changed back: a write may have landed on the
        owner in between."""
        moved, self._moved = frozenset(self._moved), set()
        return moved

    async def _ask(self) -> tuple[list[tuple[int, int, Address]], tuple[Address, ...]]:
        seed = (self.seed.host, self.seed.port) if self.seed.host else None
        candidates = [a for a in (seed, *self._primaries) if a is not None]
        failures = []
        for address in dict.fromkeys(candidates):
            wire = Wire(self.endpoint(address), name="harvest-async-topology", timeout=self.timeout)
            try:
                (reply,) = await wire.roundtrip(command("CLUSTER", "SLOTS"), 1)
            except RedisUnavailable as exc:
                failures.append(f"{address[0]}:{address[1]}: {exc}")
                continue
            finally:
                wire.close()
            if isinstance(reply, RedisReplyError) and is_permission_error(str(reply)):
                raise PermissionDenied("command cluster|slots", f"{reply} (the slot map)")
            if isinstance(reply, RedisReplyError) or not isinstance(reply, list):
                failures.append(f"{address[0]}:{address[1]}: CLUSTER SLOTS: {reply}")
                continue
            return _parse(reply, address), _replicas(reply, address)
        raise RedisUnavailable("cluster: no node answered CLUSTER SLOTS: " + "; ".join(failures))


def _parse(reply: list[Reply], asked: Address) -> list[tuple[int, int, Address]]:
    """CLUSTER SLOTS: [[first, last, [host, port, id, ...], replicas...], ...]; an empty
    host means the node we asked (cluster-preferred-endpoint-type unknown-endpoint)."""
    out = []
    for row in reply:
        if not isinstance(row, list) or len(row) < 3 or not isinstance(row[2], list):
            continue
        first, last, node = row[0], row[1], row[2]
        host, port = node[0], node[1]
        if not isinstance(first, int) or not isinstance(last, int) or not isinstance(port, int):
            continue
        address = (str(host) if host and host != "?" else asked[0], port)
        out.append((first, last, address))
    return out


def _replicas(reply: list[Reply], asked: Address) -> tuple[Address, ...]:
    """The replicas of CLUSTER SLOTS' rows (each row's nodes after its primary)."""
    out = set()
    for row in reply:
        if not isinstance(row, list):
            continue
        for node in row[3:]:
            if isinstance(node, list) and len(node) > 1 and isinstance(node[1], int):
                host = node[0]
                out.add((str(host) if host and host != "?" else asked[0], node[1]))
    return tuple(sorted(out))
