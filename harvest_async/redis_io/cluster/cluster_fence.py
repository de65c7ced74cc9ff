"""Publisher groups on a Redis Cluster: the fence checked on the lease's node, just
before the write (INTERFACE §6, docs/operations.md "Redis Cluster").

On one server the write script checks the partition's lease and epoch in the same
atomic step as the write. On a cluster the lease and epoch (one slot: the partition is
their hash tag), the proposal hash and the audit stream are in three slots, so the check
is a step of its own, made right before the write:

1. per partition of the batch, `FENCE_SCRIPT` on the lease's node: the lease must name
   this instance and the epoch key hold the epoch it was given (as the write script
   version 2 checks); it replies the lease's remaining time to live;
2. the batch's writes are sent only while every lease checked still has time left by
   this process's monotonic clock (`deadline`: the check's send time plus the smallest
   remaining TTL, less a margin); a partition that fails is refused as `FENCED`, as the
   write script would, and nothing of its outputs is written.

What holds: no other member can take a partition while its lease lives, and its lease
lives (by the server's clock) at least until the deadline computed here, so a write sent
before the deadline was sent while the partition was ours; a frozen member (SIGSTOP, GC
pause) wakes up past its deadline (and with its token at epoch 0 after 0.6 x TTL
without a renewal) and writes nothing. What does not: a write sent in time but delayed
in the network or the server beyond the lease's expiry (seconds with the default TTL)
can land after a new owner's first writes. One server's atomic check has no such window.
"""

from __future__ import annotations

from collections.abc import Sequence

from harvest_async.clock import monotonic
from harvest_async.core.ports import Output
from harvest_async.errors import RedisReplyError, RedisUnavailable
from harvest_async.redis_io.cluster.routing import NodeWires
from harvest_async.redis_io.cluster.topology import Address, SlotMap
from harvest_async.redis_io.leases import FenceFor, FenceToken
from harvest_async.redis_io.wire import command

__all__ = ["FENCE_SCRIPT", "ClusterFence"]

# KEYS: the lease, the epoch key; ARGV: the instance, the epoch it holds. Read only.
FENCE_SCRIPT = """
local holder, current = redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])
if holder ~= ARGV[1] or current ~= ARGV[2] then
  return {err = 'FENCED ' .. KEYS[1] .. ' is held by ' .. tostring(holder) .. ' at epoch '
    .. tostring(current) .. ', not by ' .. ARGV[1] .. ' at ' .. ARGV[2]}
end
return redis.call('PTTL', KEYS[1])
"""
# kept from a lease's remaining time: the time the write takes to be sent
MARGIN_SEC = 0.2


class ClusterFence:
    """The check of step 1 and the deadline of step 2 (see the module)."""

    def __init__(self, slots: SlotMap, wires: NodeWires, fence: FenceFor) -> None:
        self.slots = slots
        self.wires = wires
        self.fence = fence

    async def check(
        self, outputs: Sequence[Output]
    ) -> tuple[dict[str, FenceToken], str | None, float]:
        """({symbol: its token} for the outputs whose partition is still ours, the first
        refusal's words, the monotonic deadline before which their writes must be sent)."""
        tokens: dict[str, FenceToken] = {}
        of: dict[str, FenceToken] = {}
        for out in outputs:
            token = of[out.symbol] = self.fence(out.symbol)
            tokens.setdefault(token.lease, token)
        by_node: dict[Address, list[FenceToken]] = {}
        for token in tokens.values():
            by_node.setdefault(self.slots.node_of(token.lease), []).append(token)
        sent = monotonic()
        remaining: dict[str, float] = {}
        refusal: str | None = None
        for address, group in by_node.items():
            calls = [
                command("EVAL", FENCE_SCRIPT, 2, t.lease, t.epoch_key, t.instance, t.epoch)
                for t in group
            ]
            replies = await self.wires.roundtrip(address, b"".join(calls), len(calls))
            for token, reply in zip(group, replies, strict=True):
                if isinstance(reply, RedisReplyError):
                    if reply.code not in ("FENCED", "MOVED", "ASK"):
                        raise RedisUnavailable(f"checking the lease {token.lease}: {reply}")
                    if reply.code != "FENCED":
                        await self.wires.refresh("MOVED on a partition lease")
                    refusal = refusal or str(reply)
                elif isinstance(reply, int) and reply > 0:
                    remaining[token.lease] = reply / 1000
                else:  # no TTL (-1) or gone (-2): not a lease this member can trust
                    refusal = refusal or f"FENCED {token.lease} has no time to live ({reply})"
        deadline = sent + min(remaining.values(), default=0.0) - MARGIN_SEC
        allowed = {sym: t for sym, t in of.items() if t.lease in remaining}
        return allowed, refusal, deadline
