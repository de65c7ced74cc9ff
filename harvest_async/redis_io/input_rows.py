"""What `record` reads: the symbols that have input keys, and each symbol's three whole
input hashes. `ServerRows` on one server (a symbol's hashes in one MULTI/EXEC); the
cluster's `ClusterRows` (redis_io/cluster/cluster_rows.py) routes the reads per slot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from harvest_async.core.keys import Keys, glob_escape
from harvest_async.redis_io.client import Client, redis_errors
from harvest_async.redis_io.inputs_io import InputLimits, InputRow, read_input_rows

__all__ = ["InputRows", "ServerRows", "scan_input_symbols"]


class InputRows(Protocol):
    """The recorder's reads (`replay.recorder.Recorder`)."""

    async def discover(self) -> set[str]:
        """The symbols with at least one input key."""
        ...

    async def read(self, symbols: Sequence[str]) -> list[InputRow]:
        """Each symbol's three whole hashes (None: absent), within the size limits."""
        ...

    async def aclose(self) -> None: ...


async def scan_input_symbols(client: Any, keys: Keys) -> set[str]:
    """SCAN for every input prefix; on redis-py's cluster client the SCAN covers every
    primary."""
    found: set[str] = set()
    async with redis_errors("scanning input keys"):
        for prefix in keys.input_prefixes().values():
            async for key in client.scan_iter(match=glob_escape(prefix) + "*", count=1000):
                hit = keys.classify(key)
                if hit is not None:
                    found.add(hit[1])
    return found


class ServerRows:
    """One server (or a Sentinel's primary): a symbol's three hashes as they were at one
    instant, in transactions. Closes `client` with `aclose`."""

    def __init__(self, client: Client, keys: Keys, limits: InputLimits | None = None) -> None:
        self.client = client
        self.keys = keys
        self.limits = limits or InputLimits()

    async def discover(self) -> set[str]:
        return await scan_input_symbols(self.client, self.keys)

    async def read(self, symbols: Sequence[str]) -> list[InputRow]:
        return await read_input_rows(
            self.client, self.keys, symbols, self.limits, "all", transaction=True
        )

    async def aclose(self) -> None:
        await self.client.aclose()
