"""A publisher group's partition leases in Redis (INTERFACE §6).

Per partition P of group G: `quantum:harvest:lease:G:{P}` holds the owner's INSTANCE with
a TTL (LEASE_TTL_SEC), and `quantum:harvest:epoch:G:{P}` a fencing epoch that only grows
(INCR on every acquisition, never expires). Both carry the partition as their cluster hash
tag, so each script below touches one slot.

Every operation is a small script, so "is it still mine?" and the change are one step:

* acquire: `SET NX PX` and INCR the epoch; a lease that already names this instance (one
  it gave up locally, e.g. after missing its renew deadline) is taken again with a new
  epoch, which fences whatever it still had in flight under the old one;
* renew: PEXPIRE only if the lease still names this instance and the epoch is ours;
* release: DEL under the same condition (a clean shutdown hands over at once).

The proposal write script (redis_io.sink, version 2) checks the same two keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import redis.asyncio as aioredis

from harvest_async.core.keys import Keys
from harvest_async.redis_io.client import redis_errors

__all__ = ["FenceFor", "FenceToken", "LeaseState", "Leases"]

_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return {0, holder} end
if holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
elseif not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0, ''}
end
return {redis.call('INCR', KEYS[2]), ARGV[1]}
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class FenceToken(NamedTuple):
    """What a fenced write checks: the lease must hold `instance`, the epoch key `epoch`."""

    lease: str
    epoch_key: str
    instance: str
    epoch: int  # 0: not held (epochs start at 1), the server refuses the write


FenceFor = Callable[[str], FenceToken]  # symbol -> its partition's token


class LeaseState(NamedTuple):
    """A partition's lease as read (doctor, watch)."""

    holder: str | None
    ttl_ms: int | None
    epoch: int


class Leases:
    """One instance's lease operations for one group (batched per call)."""

    def __init__(
        self, client: aioredis.Redis, keys: Keys, group: str, instance: str, ttl: float
    ) -> None:
        self.client = client
        self.keys = keys
        self.group = group
        self.instance = instance
        self.ttl_ms = max(1, round(ttl * 1000))
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def lease_key(self, partition: int) -> str:
        return self.keys.lease(self.group, partition)

    def epoch_key(self, partition: int) -> str:
        return self.keys.epoch(self.group, partition)

    def token(self, partition: int, epoch: int) -> FenceToken:
        return FenceToken(
            self.lease_key(partition), self.epoch_key(partition), self.instance, epoch
        )

    async def acquire(self, partitions: Iterable[int]) -> dict[int, int | str]:
        """Try each partition: its new epoch (int) if taken, else who holds it (str, ''
        if it was taken between the GET and the SET)."""
        parts = list(partitions)
        if not parts:
            return {}
        context = "acquiring partition leases"
        async with redis_errors(context), self.client.pipeline(transaction=False) as pipe:
            for p in parts:
                await self._acquire(
                    keys=[self.lease_key(p), self.epoch_key(p)],
                    args=[self.instance, self.ttl_ms],
                    client=pipe,
                )
            replies = await pipe.execute()
        out: dict[int, int | str] = {}
        for p, (epoch, holder) in zip(parts, replies, strict=True):
            out[p] = int(epoch) if int(epoch) > 0 else str(holder)
        return out

    async def renew(self, held: Mapping[int, int]) -> set[int]:
        """Extend the leases held (partition -> epoch); the partitions no longer ours."""
        return await self._each(self._renew, held, "renewing partition leases", ttl=True)

    async def release(self, held: Mapping[int, int]) -> set[int]:
        """Delete the leases held (those still ours); the partitions that were not."""
        return await self._each(self._release, held, "releasing partition leases", ttl=False)

    async def _each(
        self, script: object, held: Mapping[int, int], context: str, *, ttl: bool
    ) -> set[int]:
        if not held:
            return set()
        parts = list(held)
        run = script  # an AsyncScript; typed loosely: redis-py's stubs are partial
        async with redis_errors(context), self.client.pipeline(transaction=False) as pipe:
            for p in parts:
                args: list[str | int] = [self.instance, held[p]]
                if ttl:
                    args.append(self.ttl_ms)
                await run(  # type: ignore[operator]
                    keys=[self.lease_key(p), self.epoch_key(p)], args=args, client=pipe
                )
            replies = await pipe.execute()
        return {p for p, ok in zip(parts, replies, strict=True) if not int(ok)}

    async def read(self, partitions: int) -> dict[int, LeaseState]:
        """Every partition's lease: holder, remaining TTL, epoch (doctor, watch)."""
        context = "reading partition leases"
        async with redis_errors(context), self.client.pipeline(transaction=False) as pipe:
            for p in range(partitions):
                pipe.get(self.lease_key(p))
                pipe.pttl(self.lease_key(p))
                pipe.get(self.epoch_key(p))
            replies = await pipe.execute()
        out = {}
        for p in range(partitions):
            holder, pttl, epoch = replies[3 * p : 3 * p + 3]
            out[p] = LeaseState(
                holder if isinstance(holder, str) else None,
                int(pttl) if isinstance(pttl, int) and pttl >= 0 else None,
                int(epoch) if epoch else 0,
            )
        return out
