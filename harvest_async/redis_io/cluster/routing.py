"""Sending commands to the node that serves their key: one wire connection per node,
MOVED and ASK redirections, shared by the cluster's reader and sink.

A MOVED reply says the slot has a new owner: the map is read again and the command sent
there. An ASK reply (a slot being migrated, the key already gone to the target) is
followed once, at the named node, behind ASKING, without touching the map. Neither ran
the command, so following them is always safe.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from harvest_async.errors import RedisReplyError, RedisUnavailable
from harvest_async.redis_io.cluster.topology import Address, SlotMap
from harvest_async.redis_io.wire import Reply, Wire, command

__all__ = ["ASKING", "NodeWires", "redirect"]

ASKING = command("ASKING")
# redirections followed for one command before giving up (a reshard in progress)
MAX_REDIRECTS = 5


def redirect(reply: Reply) -> tuple[str, Address] | None:
    """("MOVED" | "ASK", the node named) for a redirection reply, else None."""
    if not isinstance(reply, RedisReplyError) or reply.code not in ("MOVED", "ASK"):
        return None
    words = str(reply).split()
    if len(words) < 3:
        return None
    host, _, port = words[2].rpartition(":")
    return reply.code, (host, int(port))


class NodeWires:
    """One `Wire` per node address, opened lazily, named `name`."""

    def __init__(self, slots: SlotMap, name: str, timeout: float) -> None:
        self.slots = slots
        self.name = name
        self.timeout = timeout
        self._wires: dict[Address, Wire] = {}
        self._locks: dict[Address, anyio.Lock] = {}

    def at(self, address: Address) -> Wire:
        wire = self._wires.get(address)
        if wire is None:
            wire = Wire(self.slots.endpoint(address), name=self.name, timeout=self.timeout)
            self._wires[address] = wire
        return wire

    async def roundtrip(self, address: Address, payload: bytes, replies: int) -> list[Reply]:
        """A round trip on `address`'s connection, after any other one there: the nodes
        are talked to in parallel, and an ASK can send one task to another's node."""
        lock = self._locks.setdefault(address, anyio.Lock())
        async with lock:
            return await self.at(address).roundtrip(payload, replies)

    def close(self) -> None:
        for wire in self._wires.values():
            wire.close()
        self._wires.clear()

    def forget(self, keep: Sequence[Address]) -> None:
        """Close the connections to nodes that are no longer primaries."""
        for address in [a for a in self._wires if a not in keep]:
            self._wires.pop(address).close()

    async def refresh(self, why: str, *, lost: bool = False) -> None:
        """Read the slot map again (MOVED, a lost connection); a failure to read it is
        the caller's next attempt's problem. `lost`: a node could not be reached, so the
        map is re-read often for a while (a failover in progress)."""
        if lost:
            self.slots.suspect()
        try:
            await self.slots.refresh(why)
        except RedisUnavailable:
            return
        self.forget(self.slots.primaries)
