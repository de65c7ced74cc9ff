"""Reading the inputs on a Redis Cluster: each input hash from the primary serving its
slot, through the same size-guarded read script as on one server (`inputs_io`), one
pipelined round trip per node, the nodes in parallel.

A symbol's three input keys carry no hash tag, so they usually live on three nodes. The
read script is loaded on a node whenever its connection is new and after a NOSCRIPT;
MOVED and ASK are followed (`routing`). Discovery (SCAN over every primary) and the
published proposals are cold paths on the redis-py cluster client, shared with the
one-server reader's code (`RedisInputReader.discover`, `read_published`). `mode` "all"
reads whole hashes instead of the fields the service uses (`record`, `ClusterRows`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import anyio
import redis.asyncio as aioredis

from harvest_async.core.input_hashes import Hash, SymbolInputs
from harvest_async.core.keys import Keys
from harvest_async.core.rounds import ALL_KINDS, KIND_BITS
from harvest_async.errors import (
    NodeUnavailable,
    RedisReplyError,
    RedisUnavailable,
    WriteUncertain,
)
from harvest_async.redis_io.cluster.routing import ASKING, MAX_REDIRECTS, NodeWires, redirect
from harvest_async.redis_io.cluster.topology import Address, SlotMap, slot_of
from harvest_async.redis_io.inputs_io import (
    READ_COMMANDS,
    READ_SCRIPT,
    READ_SHA,
    InputLimits,
    Mode,
    decode_reply,
    read_error,
    unknown_command,
)
from harvest_async.redis_io.reader import INPUTS_CONNECTION, RedisInputReader
from harvest_async.redis_io.wire import Reply, command

__all__ = ["ClusterInputReader"]

_KINDS = ("marketstate", "risk", "position")
_LOAD = command("SCRIPT", "LOAD", READ_SCRIPT)


class ClusterInputReader:
    """The InputReader on a cluster (see the module)."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        slots: SlotMap,
        *,
        limits: InputLimits | None = None,
        timeout: float = 5.0,
        mode: Mode = "used",
    ) -> None:
        self.keys = keys
        self.mode: Mode = mode  # "used": the fields the service reads; "all": whole hashes
        self.slots = slots
        self.limits = limits or InputLimits()
        self.command = READ_COMMANDS[0]
        self._wires = NodeWires(slots, INPUTS_CONNECTION, timeout)
        # the cold paths: redis-py's cluster client routes them itself
        self._cold = RedisInputReader(client, keys, slots.seed, limits=self.limits)

    def close(self) -> None:
        self._wires.close()
        self._cold.close()

    async def discover(self) -> list[str]:
        try:
            return await self._cold.discover()
        except RedisUnavailable as exc:
            raise self._at_node(exc) from exc

    async def read_published(self, symbols: Sequence[str] | None) -> dict[str, Hash]:
        try:
            return await self._cold.read_published(symbols)
        except RedisUnavailable as exc:
            raise self._at_node(exc) from exc

    def _at_node(self, exc: RedisUnavailable) -> RedisUnavailable:
        """A cold path's failure as the failure of the primary it names (redis-py's
        connection errors say "connecting to host:port"), so that it costs a resync of
        that node's slots only; as it was when it names none."""
        text = str(exc)
        for node in self.slots.primaries:
            if f"{node[0]}:{node[1]}" in text:
                return NodeUnavailable(text, node, self.slots.served(node))
        return exc

    # -- the hot path ----------------------------------------------------------------------
    def _call(self, kind: str, key: str) -> bytes:
        return command(self.command, READ_SHA, 1, key, *self.limits.args(kind, self.mode))

    async def fetch(
        self, symbols: Sequence[str], kinds: Sequence[int] | None = None
    ) -> list[SymbolInputs]:
        """As `RedisInputReader.fetch`: with `kinds` only those hashes (the others None)."""
        if not symbols:
            return []
        if not self.slots.ready:
            await self.slots.refresh("first read")
        keys = self.keys
        masks = [ALL_KINDS] * len(symbols) if kinds is None else kinds
        wanted: list[tuple[str, str]] = []
        where: list[tuple[int, int]] = []  # (symbol's index, kind's index) of each read
        for i, (sym, mask) in enumerate(zip(symbols, masks, strict=True)):
            for index, (kind, key) in enumerate(
                (("marketstate", keys.marketstate(sym)), ("risk", keys.risk(sym)),
                 ("position", keys.position(sym)))
            ):  # fmt: skip
                if mask & KIND_BITS[kind]:
                    wanted.append((kind, key))
                    where.append((i, index))
        raw = await self._read_all(wanted)
        got: list[list[Hash | None]] = [[None, None, None] for _ in symbols]
        for (i, index), (kind, key), reply in zip(where, wanted, raw, strict=True):
            got[i][index] = self._hash(kind, key, reply)
        return [SymbolInputs(sys.intern(sym), *row) for sym, row in zip(symbols, got, strict=True)]

    def _hash(self, kind: str, key: str, reply: Reply) -> Hash | None:
        if reply is None:
            return None
        fields = decode_reply(kind, key, reply, self.limits, self.mode)
        if isinstance(fields, Exception):
            return read_error(kind, fields, "reading inputs")
        return fields

    async def _read_all(self, wanted: list[tuple[str, str]]) -> list[Reply]:
        raw: list[Reply] = [None] * len(wanted)
        pending = list(range(len(wanted)))
        for attempt in range(MAX_REDIRECTS):
            by_node: dict[Address, list[int]] = {}
            for i in pending:
                by_node.setdefault(self.slots.node_of(wanted[i][1]), []).append(i)
            moved: list[int] = []
            lost: list[tuple[Address, str]] = []

            async def one(
                address: Address,
                items: list[int],
                moved: list[int] = moved,
                lost: list[tuple[Address, str]] = lost,
            ) -> None:
                try:
                    replies = await self._node(address, [wanted[i] for i in items])
                except RedisUnavailable as exc:
                    lost.append((address, str(exc)))
                    moved.extend(items)
                    return
                for i, first in zip(items, replies, strict=True):
                    reply, found = first, redirect(first)
                    if found is not None and found[0] == "ASK":
                        _l, _a, reply = await self._wires.roundtrip(
                            found[1], _LOAD + ASKING + self._call(*wanted[i]), 3
                        )
                        found = redirect(reply)
                    if found is not None:
                        moved.append(i)
                    else:
                        raw[i] = reply

            async with anyio.create_task_group() as tg:
                for address, items in by_node.items():
                    tg.start_soon(one, address, items)
            if not moved:
                return raw
            if lost and attempt == MAX_REDIRECTS - 1:
                # a resync after it covers what that node served (and the keys that failed,
                # had the map dropped it meanwhile)
                node, why = lost[0]
                slots = self.slots.served(node) | {slot_of(wanted[i][1]) for i in moved}
                raise NodeUnavailable(f"reading inputs: {why}", node, slots)
            await self._wires.refresh("MOVED or a lost node while reading inputs", lost=bool(lost))
            if lost:
                await anyio.sleep(0.1 * (attempt + 1))  # a failover takes a few seconds
            pending = moved
        raise RedisUnavailable("reading inputs: the slots kept moving")

    async def _node(self, address: Address, items: list[tuple[str, str]]) -> list[Reply]:
        """One node's reads in one round trip; the script (re)loaded as needed; a kept
        connection found closed is replaced once (reading is idempotent)."""
        wire = self._wires.at(address)
        for attempt in (1, 2, 3):
            load = wire.fresh or attempt > 1
            # the nodes are read in parallel: another may switch `self.command` meanwhile
            sent = self.command
            body = b"".join(self._call(kind, key) for kind, key in items)
            try:
                raw = await self._wires.roundtrip(
                    address, (_LOAD if load else b"") + body, len(items) + load
                )
            except WriteUncertain:
                if attempt == 3:
                    raise
                continue
            replies = raw[1:] if load else raw
            if unknown_command(replies[0]) and sent != READ_COMMANDS[-1]:
                self.command = READ_COMMANDS[-1]  # no EVALSHA_RO (Redis 6.2)
                continue
            if any(isinstance(r, RedisReplyError) and r.code == "NOSCRIPT" for r in replies):
                continue
            return replies
        raise RedisUnavailable(f"reading inputs at {address[0]}:{address[1]}: NOSCRIPT")
