"""The publishers' liveness keys (`{liveness_prefix}{instance}`): the service writes its
own (`LivenessWriter`); `read_publishers` tells who is publishing, and when it last said so.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable

import msgspec
import redis.asyncio as aioredis

from harvest_async import __version__
from harvest_async.core.keys import Keys
from harvest_async.core.timefmt import iso_utc
from harvest_async.errors import PermissionDenied, RedisUnavailable
from harvest_async.redis_io.client import (
    REDIS_OR_REPLY_ERRORS,
    redis_errors,
    refused,
    scan_symbols,
)

__all__ = ["LivenessWriter", "Publisher", "read_publishers"]

log = logging.getLogger(__name__)


class LivenessWriter:
    """`{liveness_prefix}{instance}`: who is publishing, refreshed while healthy (a hash
    and its TTL in one MULTI/EXEC, so the key never lives without its TTL)."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        instance: str,
        ttl: float,
        *,
        group: str | None = None,
        partitions: int | None = None,
    ) -> None:
        self.client = client
        self.partitions = partitions
        self.group = group  # a publisher group's members find each other by it (§6)
        self.key = keys.liveness(instance)
        self.instance = instance
        self.ttl = ttl
        self.started_at: float | None = None
        self._written = False  # a beat has succeeded

    async def beat(self, now: float, symbols: int) -> bool:
        """Write the key; True if it was gone although an earlier beat had written it:
        Redis lost its data (FLUSHALL, a failover to an empty replica) or the key expired
        while we could not refresh it, and the proposals may be gone with it."""
        if self.started_at is None:
            self.started_at = now
        fields = {
            "instance": self.instance,
            "version": __version__,
            "pid": str(os.getpid()),
            "host": socket.gethostname(),
            "started_at": iso_utc(self.started_at),
            "last_beat_epoch": repr(round(now, 3)),
            "symbols": str(symbols),
        }
        if self.group is not None:
            fields["group"] = self.group
            fields["partitions"] = str(self.partitions)
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(self.key, mapping=fields)  # type: ignore[arg-type]
                pipe.pexpire(self.key, int(self.ttl * 1000))
                added, _ = await pipe.execute()
        except REDIS_OR_REPLY_ERRORS as exc:
            if "exec without multi" in str(exc).lower():  # how redis-py tells MULTI refused
                raise PermissionDenied("command multi while liveness write", str(exc)) from exc
            raise refused("liveness write", exc) from exc
        gone = self._written and int(added) > 0  # HSET added fields: the key was new
        self._written = True
        return gone

    async def clear(self) -> None:
        try:
            await self.client.delete(self.key)
        except REDIS_OR_REPLY_ERRORS as exc:
            log.debug("liveness clear failed: %s", exc)


class Publisher(msgspec.Struct, frozen=True):
    """A liveness key as read. It exists only while its publisher refreshes it (TTL)."""

    instance: str
    host: str = ""
    pid: str = ""
    version: str = ""
    symbols: str = ""
    group: str = ""  # its publisher group (INTERFACE §6), "" for none
    partitions: str = ""  # its group's PARTITIONS (must be the same on every member)
    last_beat_epoch: float | None = None
    ttl_sec: float | None = None  # what is left of the key's TTL when read

    def beat_age(self, now: float) -> float | None:
        return None if self.last_beat_epoch is None else max(0.0, now - self.last_beat_epoch)


def _epoch(raw: str | None) -> float | None:
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


async def read_publishers(
    client: aioredis.Redis,
    keys: Keys,
    *,
    names: Iterable[str] | None = None,
    limit: int = 100,
) -> list[Publisher]:
    """The live publishers' liveness hashes (sorted by instance): every one found by a
    SCAN, or only those of `names` (no SCAN: cheap enough to repeat every second)."""
    prefix = keys.liveness_prefix
    async with redis_errors("reading the liveness keys"):
        if names is None:
            names = await scan_symbols(client, prefix, limit)
        names = sorted(set(names))
        async with client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(prefix + name)
                pipe.pttl(prefix + name)
            replies = await pipe.execute(raise_on_error=False)
    for reply in replies:
        # an error reply is a read that failed (CLUSTERDOWN, TRYAGAIN during a failover),
        # not a key found missing: a group member must not take a live peer for gone
        if isinstance(reply, Exception) and "WRONGTYPE" not in str(reply):
            raise RedisUnavailable(f"reading the liveness keys: {reply}")
    out = []
    for i, name in enumerate(names):
        fields, pttl = replies[2 * i], replies[2 * i + 1]
        if not isinstance(fields, dict) or not fields:
            continue  # expired between SCAN and HGETALL, or not a hash
        out.append(
            Publisher(
                instance=name,
                host=fields.get("host", ""),
                pid=fields.get("pid", ""),
                version=fields.get("version", ""),
                symbols=fields.get("symbols", ""),
                group=fields.get("group", ""),
                partitions=fields.get("partitions", ""),
                last_beat_epoch=_epoch(fields.get("last_beat_epoch")),
                ttl_sec=pttl / 1000.0 if isinstance(pttl, int) and pttl >= 0 else None,
            )
        )
    return out
