"""A publisher group's leases on a Redis Cluster: the same scripts as on one server
(`leases.Leases`), each call routed to its partition's node by redis-py's cluster client.
redis-py refuses scripts inside a cluster pipeline, so the calls go out concurrently, one
per partition, instead of in one pipeline (a partition's lease and epoch share a slot:
each call is still one atomic step)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import anyio

from harvest_async.errors import RedisUnavailable
from harvest_async.redis_io.client import redis_errors
from harvest_async.redis_io.leases import Leases

__all__ = ["ClusterLeases"]


class ClusterLeases(Leases):
    async def acquire(self, partitions: Iterable[int]) -> dict[int, int | str]:
        parts = list(partitions)
        replies = await self._concurrently(
            self._acquire, parts, lambda _p: [self.instance, self.ttl_ms], "acquiring"
        )
        out: dict[int, int | str] = {}
        for p, (epoch, holder) in replies.items():
            out[p] = int(epoch) if int(epoch) > 0 else str(holder)
        return out

    async def renew(self, held: Mapping[int, int]) -> set[int]:
        replies = await self._concurrently(
            self._renew, list(held), lambda p: [self.instance, held[p], self.ttl_ms], "renewing"
        )
        return {p for p, ok in replies.items() if not int(ok)}

    async def release(self, held: Mapping[int, int]) -> set[int]:
        replies = await self._concurrently(
            self._release, list(held), lambda p: [self.instance, held[p]], "releasing"
        )
        return {p for p, ok in replies.items() if not int(ok)}

    async def _concurrently(
        self, script: Any, parts: list[int], args: Any, verb: str
    ) -> dict[int, Any]:
        replies: dict[int, Any] = {}
        failures: list[RedisUnavailable] = []

        async def one(p: int) -> None:
            keys = [self.lease_key(p), self.epoch_key(p)]
            try:
                async with redis_errors(f"{verb} partition leases"):
                    replies[p] = await script(keys=keys, args=args(p))
            except RedisUnavailable as exc:  # one error for the caller, not a group
                failures.append(exc)

        async with anyio.create_task_group() as tg:
            for p in parts:
                tg.start_soon(one, p)
        if failures:
            raise failures[0]
        return replies
