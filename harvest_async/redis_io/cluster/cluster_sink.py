"""Writing proposals on a Redis Cluster (docs/outputs.md, "On a Redis Cluster").

The proposal hash `...proposal:SYM` and the audit stream hash to different slots, so
no script or transaction can cover both (CROSSSLOT). The contract's promises (§2.2, §7)
come from the order instead:

1. the audit entries of a batch: plain `XADD ... MAXLEN ~` on the stream's node, all in
   one round trip (one node: one key);
2. only for the outputs whose entry was appended: the hash change, through the same write
   script as on one server (interface version 1 without a stream: DEL + HSET + PEXPIRE,
   or DEL for a retraction), pipelined per node of the hash.

What holds: the hash is never ahead of its audit entry (it is written only after the
XADD was acknowledged); no audit entry is written twice (an XADD whose outcome is
unknown is looked up in the stream by symbol and seq before it is sent again, and the
hash step, which is idempotent, is the only thing ever repeated blindly). What is weaker
than on one server: the two steps are not atomic. When the hash step fails after the
entry was appended (the hash's node lost, a refusal), the output is reported as touched:
its entry exists and the hash is behind it, and the runner publishes again with a new
seq, as on one server after a TOUCHED script reply. Readers of the stream may see an
entry a few milliseconds before the hash shows it.

`landed` (the runner's check after an uncertain write) finishes the job instead of only
looking: an output whose entry is in the stream gets its hash written now; one whose
entry is not is written in full. Either way it ends confirmed, never duplicated.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio

from harvest_async.clock import monotonic
from harvest_async.core.keys import Keys
from harvest_async.core.ports import Output, PublishOut
from harvest_async.errors import (
    Fenced,
    RedisReplyError,
    RedisUnavailable,
    WriteRefused,
    WriteUncertain,
)
from harvest_async.redis_io.cluster.cluster_fence import ClusterFence
from harvest_async.redis_io.cluster.routing import ASKING, MAX_REDIRECTS, NodeWires, redirect
from harvest_async.redis_io.cluster.topology import Address, SlotMap
from harvest_async.redis_io.leases import FenceFor, FenceToken
from harvest_async.redis_io.sink import WRITE_SCRIPT, WRITE_SHA, WRITES_CONNECTION
from harvest_async.redis_io.wire import Reply, command

__all__ = ["ClusterSink"]

log = logging.getLogger(__name__)

_LOAD = command("SCRIPT", "LOAD", WRITE_SCRIPT)
_LOOKBACK_MS = 300_000
_PAGE = 1000


class ClusterSink:
    """The Sink on a cluster (see the module); with a publisher group, the fence is
    checked on the lease's node before the write (`cluster_fence`)."""

    def __init__(
        self,
        slots: SlotMap,
        keys: Keys,
        *,
        enable_stream: bool = True,
        stream_maxlen: int = 100_000,
        proposal_ttl: float = 0.0,
        timeout: float = 5.0,
        fence: FenceFor | None = None,
    ) -> None:
        """`fence`: a publisher group's lease token per symbol (`cluster_fence`)."""
        self.slots = slots
        self.keys = keys
        self.enable_stream = enable_stream
        self.stream_maxlen = stream_maxlen
        self._ttl_ms = max(0, round(proposal_ttl * 1000))
        self._wires = NodeWires(slots, WRITES_CONNECTION, timeout)
        self._fence = ClusterFence(slots, self._wires, fence) if fence is not None else None
        self._tokens: dict[str, FenceToken] = {}  # the batch's, for its audit entries
        self._lost: Address | None = None  # the write's: a hashes' node not reached

    def close(self) -> None:
        self._wires.close()

    # -- the Sink protocol ----------------------------------------------------------------
    async def write(self, outputs: Sequence[Output]) -> None:
        if not outputs:
            return
        if not self.slots.ready:
            await self.slots.refresh("first write")
        self._lost = None
        if self._fence is None:
            appended, refusal = await self._audit(list(outputs))
            written, failure = await self._hashes(appended)
            fenced = None
        else:
            written, appended, refusal, failure, fenced = await self._fenced(outputs)
        if refusal is None and failure is None and fenced is None:
            return
        done = {id(o) for o in written}
        touched = [o for o in appended if id(o) not in done]
        if fenced is not None:
            raise Fenced(fenced, landed=written, touched=touched)
        raise WriteRefused(
            str(refusal or failure),
            landed=written,
            touched=touched,
            unreachable=self._lost if refusal is None else None,
        )

    async def _fenced(
        self, outputs: Sequence[Output]
    ) -> tuple[list[Output], list[Output], str | None, str | None, str | None]:
        """A group's write: the fence checked first, the writes sent only before its
        deadline (`cluster_fence`). (written, appended, refusal, failure, fenced)."""
        assert self._fence is not None
        self._tokens, fenced, deadline = await self._fence.check(outputs)
        mine = [o for o in outputs if o.symbol in self._tokens]
        if len(mine) < len(outputs):
            fenced = fenced or "FENCED"
        if mine and monotonic() >= deadline:
            return [], [], None, None, "FENCED the lease ran out before the write was sent"
        appended, refusal = await self._audit(mine)
        if appended and monotonic() >= deadline:
            # the entries are in, the hashes not: touched, and the partition given up
            return [], appended, None, None, "FENCED the lease ran out between entry and hash"
        written, failure = await self._hashes(appended)
        return written, appended, refusal, failure, fenced

    async def landed(self, outputs: Sequence[Output]) -> bool:
        """Settle a write whose outcome was unknown: finish what it started (see the
        module). True once every output is written; RedisUnavailable while Redis cannot
        answer."""
        if not self.slots.ready:
            await self.slots.refresh("checking an earlier write")
        present = await self._in_stream(outputs) if self.enable_stream else list(outputs)
        rest = [o for o in outputs if all(o is not p for p in present)]
        if self._fence is not None:
            # finished only while the partitions are still ours; else left behind its
            # entry, and the runner's re-evaluation finds the partitions fenced
            tokens, _refusal, deadline = await self._fence.check(outputs)
            if len(tokens) < len(outputs) or monotonic() >= deadline:
                return False
        _written, failure = await self._hashes(present)
        if failure is not None:
            raise RedisUnavailable(f"completing an earlier write: {failure}")
        if rest:
            await self.write(rest)
        return True

    # -- step 1: the audit entries ---------------------------------------------------------
    def _xadd(self, out: Output) -> bytes:
        fields = out.audit_fields()  # event=... first
        token = self._tokens.get(out.symbol) if self._fence is not None else None
        if token is not None:  # as the write script version 2: who wrote, under which epoch
            fields = {
                "event": fields.pop("event"),
                "instance": token.instance,
                "lease_epoch": str(token.epoch),
                **fields,
            }
        flat = [x for pair in fields.items() for x in pair]
        return command("XADD", self.keys.stream, "MAXLEN", "~", self.stream_maxlen, "*", *flat)

    async def _audit(self, outputs: list[Output]) -> tuple[list[Output], str | None]:
        """(the outputs whose entry is in the stream, the first refusal if any). Never
        raises once an entry was appended: the caller must write those hashes."""
        if not self.enable_stream or not outputs:
            return outputs, None
        pending = outputs
        done: list[Output] = []
        refusal: str | None = None
        for attempt in range(MAX_REDIRECTS):
            try:
                appended, retry, refused = await self._append(pending)
            except WriteUncertain as exc:
                # sent, not all answered: look before sending anything again
                try:
                    found = await self._in_stream(pending)
                except RedisUnavailable as check:
                    if done:  # the rest is settled by the runner's next write
                        return done, f"audit entries: {exc}; check failed: {check}"
                    uncertain = WriteUncertain(f"audit entries: {exc}; check failed: {check}")
                    uncertain.node = exc.node
                    raise uncertain from exc
                done += found
                pending = [o for o in pending if all(o is not f for f in found)]
                if not pending:
                    break
                continue
            except RedisUnavailable as exc:  # nothing of this attempt was sent
                if done:
                    return done, str(exc)
                if attempt == MAX_REDIRECTS - 1:
                    raise
                await self._wires.refresh("audit stream's node unreachable", lost=True)
                continue
            done += appended
            refusal = refusal or refused
            pending = retry
            if not pending:
                break
            await self._wires.refresh("MOVED on the audit stream")
        else:
            refusal = refusal or "the audit stream's slot kept moving"
        return done, refusal

    async def _append(self, outputs: list[Output]) -> tuple[list[Output], list[Output], str | None]:
        """One attempt: (appended, to send again after MOVED, the first refusal). An ASK
        (the stream's slot migrating) is followed at once, behind ASKING."""
        address = self.slots.node_of(self.keys.stream)
        calls = [self._xadd(o) for o in outputs]
        try:
            replies = await self._wires.roundtrip(address, b"".join(calls), len(calls))
        except RedisUnavailable as exc:
            exc.node = address  # the outage names it
            raise
        appended: list[Output] = []
        retry: list[Output] = []
        refusal: str | None = None
        for out, first in zip(outputs, replies, strict=True):
            reply, found = first, redirect(first)
            if found is not None and found[0] == "ASK":
                _, reply = await self._wires.roundtrip(found[1], ASKING + self._xadd(out), 2)
                found = redirect(reply)
            if found is not None:
                retry.append(out)
            elif isinstance(reply, RedisReplyError):
                refusal = refusal or f"{reply} [XADD]"
            else:
                appended.append(out)
        return appended, retry, refusal

    # -- step 2: the hashes ----------------------------------------------------------------
    def _script(self, out: Output) -> bytes:
        key = self.keys.proposal(out.symbol)
        if isinstance(out, PublishOut):
            flat = [x for pair in out.fields.items() for x in pair]
            op = "publish"
        else:
            flat, op = [], "retract"
        return command(
            "EVALSHA", WRITE_SHA, 1, key, "1", op, out.seq, self._ttl_ms, self.stream_maxlen, *flat
        )

    async def _hashes(self, outputs: Sequence[Output]) -> tuple[list[Output], str | None]:
        """Write the hashes of `outputs`, per node in parallel: (written, first failure)."""
        by_node: dict[Address, list[Output]] = {}
        try:
            for out in outputs:
                node = self.slots.node_of(self.keys.proposal(out.symbol))
                by_node.setdefault(node, []).append(out)
        except RedisUnavailable as exc:  # a slot without a primary: nothing written
            return [], str(exc)
        written: list[Output] = []
        failures: list[str] = []

        async def one(address: Address, group: list[Output]) -> None:
            try:
                written.extend(await self._node_hashes(address, group))
            except WriteRefused as exc:
                failures.append(str(exc))
            except RedisUnavailable as exc:
                self._lost = address
                failures.append(str(exc))

        async with anyio.create_task_group() as tg:
            for address, group in by_node.items():
                tg.start_soon(one, address, group)
        missing = len(outputs) - len(written)
        if missing and not failures:
            failures.append(f"{missing} proposal hashes not written")
        return written, (failures[0] if failures else None)

    async def _node_hashes(self, address: Address, outputs: list[Output]) -> list[Output]:
        """The hash writes on one node: the script loaded when the connection is new or
        the node forgot it; MOVED/ASK followed; an unknown outcome sent again (the hash
        write is idempotent). Returns the outputs written; raises RedisUnavailable."""
        written: list[Output] = []
        pending = outputs
        moved = False
        for _attempt in range(MAX_REDIRECTS):
            if moved:
                await self._wires.refresh("MOVED on a proposal hash")
                moved = False
            groups: dict[Address, list[Output]] = {}
            for out in pending:
                groups.setdefault(self.slots.node_of(self.keys.proposal(out.symbol)), []).append(
                    out
                )
            retry: list[Output] = []
            for node, group in groups.items():
                replies = await self._send(node, [self._script(o) for o in group])
                for out, first in zip(group, replies, strict=True):
                    reply, found = first, redirect(first)
                    if found is not None and found[0] == "ASK":
                        (_load, _ask, answer) = await self._wires.roundtrip(
                            found[1], _LOAD + ASKING + self._script(out), 3
                        )
                        reply = answer
                        found = redirect(reply)
                    if found is not None:
                        moved = True
                        retry.append(out)
                    elif isinstance(reply, RedisReplyError):
                        raise WriteRefused(f"{reply} [proposal hash {out.symbol}]")
                    else:
                        written.append(out)
            pending = retry
            if not pending:
                return written
        return written

    async def _send(self, address: Address, calls: list[bytes]) -> list[Reply]:
        wire = self._wires.at(address)
        body = b"".join(calls)
        for attempt in (1, 2):
            load = wire.fresh
            try:
                raw = await self._wires.roundtrip(
                    address, (_LOAD if load else b"") + body, len(calls) + load
                )
            except WriteUncertain:
                if attempt == 2:
                    raise
                continue  # idempotent: the same hash contents again
            except RedisUnavailable:
                await self._wires.refresh("a proposal hash's node unreachable", lost=True)
                raise
            replies = raw[1:] if load else raw
            if any(isinstance(r, RedisReplyError) and r.code == "NOSCRIPT" for r in replies):
                raw = await self._wires.roundtrip(address, _LOAD + body, len(calls) + 1)
                replies = raw[1:]
            return replies
        raise AssertionError("unreachable")

    # -- did an entry land? ----------------------------------------------------------------
    async def _in_stream(self, outputs: Sequence[Output]) -> list[Output]:
        """The outputs whose audit entry (symbol, seq) is in the stream: newest first,
        back to a few minutes before the oldest was computed."""
        if not outputs:
            return []
        wanted = {(o.symbol, str(o.seq)): o for o in outputs}
        oldest = max(0, int(min(o.at for o in outputs) * 1000) - _LOOKBACK_MS)
        found: list[Output] = []
        end = "+"
        address = self.slots.node_of(self.keys.stream)
        while wanted:
            (page,) = await self._wires.roundtrip(
                address, command("XREVRANGE", self.keys.stream, end, str(oldest), "COUNT", _PAGE), 1
            )
            if not isinstance(page, list):
                raise RedisUnavailable(f"checking the audit stream: {page}")
            for entry in page:
                assert isinstance(entry, list) and isinstance(entry[1], list)
                flat = entry[1]
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                out = wanted.pop((str(fields.get("symbol")), str(fields.get("seq"))), None)
                if out is not None:
                    found.append(out)
            if len(page) < _PAGE:
                break
            last = page[-1]
            assert isinstance(last, list)
            end = f"({last[0]}"
        return found
