"""What `record` reads on a Redis Cluster: discovery through redis-py's cluster client
(its SCAN covers every primary), the whole hashes through `ClusterInputReader` (mode
"all"): routed per slot, one pipelined round trip per node, MOVED and ASK followed.

A symbol's three keys usually live on three nodes, so they cannot be read in one
transaction (CROSSSLOT): the three hashes are read at nearly, not exactly, one instant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harvest_async.config import Settings
from harvest_async.core.keys import Keys
from harvest_async.redis_io.client import client_for, endpoint_for
from harvest_async.redis_io.cluster.cluster_reader import ClusterInputReader
from harvest_async.redis_io.cluster.setup import cluster_client, cluster_mode
from harvest_async.redis_io.cluster.topology import SlotMap
from harvest_async.redis_io.input_rows import InputRows, ServerRows, scan_input_symbols
from harvest_async.redis_io.inputs_io import InputLimits, InputRow

__all__ = ["ClusterRows", "input_rows_at"]


class ClusterRows:
    """`InputRows` on a cluster (see the module). Closes `client` with `aclose`."""

    def __init__(
        self,
        client: Any,
        keys: Keys,
        slots: SlotMap,
        *,
        limits: InputLimits | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.client = client
        self.keys = keys
        self.reader = ClusterInputReader(
            client, keys, slots, limits=limits, timeout=timeout, mode="all"
        )

    async def discover(self) -> set[str]:
        return await scan_input_symbols(self.client, self.keys)

    async def read(self, symbols: Sequence[str]) -> list[InputRow]:
        got = await self.reader.fetch(symbols)
        return [(s.marketstate, s.risk, s.position) for s in got]

    async def aclose(self) -> None:
        self.reader.close()
        await self.client.aclose()


async def input_rows_at(settings: Settings, *, name: str) -> InputRows:
    """The reads for REDIS_URL: `ClusterRows` on a cluster node (`cluster_mode`), else
    `ServerRows`."""
    limits = InputLimits.of(settings)
    if not await cluster_mode(settings):
        client = client_for(settings.redis_url, settings.redis_password, retries=3, name=name)
        return ServerRows(client, settings.keys, limits)
    slots = SlotMap(endpoint_for(settings), timeout=settings.redis_timeout_sec)
    await slots.refresh("start")
    return ClusterRows(
        cluster_client(settings, name=name),
        settings.keys,
        slots,
        limits=limits,
        timeout=settings.redis_timeout_sec,
    )
