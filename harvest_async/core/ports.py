"""What flows between the engine and the world: outputs, change events, and the protocols
the adapters implement (Redis live, in-memory in replay and tests).

Pure: typing and msgspec only. The live runner (`service.runner`) and the replayer
(`replay.replayer`) drive the same `core.rounds.Rounds` through these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from harvest_async.core.input_hashes import Hash, SymbolInputs
from harvest_async.core.models import Decision

__all__ = [
    "ChangeSource",
    "Changed",
    "Event",
    "Gap",
    "InputReader",
    "NullHooks",
    "Observer",
    "Output",
    "PublishOut",
    "RetractOut",
    "RunnerHooks",
    "Sink",
    "Started",
]


# -- outputs ------------------------------------------------------------------------------
class PublishOut(msgspec.Struct, frozen=True, gc=False):
    """A proposal to write: the whole hash, and its audit entry (`event=publish`)."""

    symbol: str
    fields: Hash  # the whole proposal hash (also the audit entry's fields)
    decision: Decision
    plan_id: str
    seq: int
    at: float
    trigger: str
    material: bool

    def audit_fields(self) -> Hash:
        return {"event": "publish", **self.fields}


class RetractOut(msgspec.Struct, frozen=True, gc=False):
    """A retraction: delete the hash, append `event=retract` with the reason."""

    symbol: str
    reason: str
    seq: int
    at: float

    def audit_fields(self) -> Hash:
        return {
            "event": "retract",
            "symbol": self.symbol,
            "reason": self.reason,
            "seq": str(self.seq),
            "ts_epoch": repr(round(self.at, 6)),
        }


Output = PublishOut | RetractOut


# -- change events ------------------------------------------------------------------------
class Changed(msgspec.Struct, frozen=True, gc=False):
    """An input of `symbol` may have changed ("look again")."""

    symbol: str
    kind: str  # "marketstate" | "risk" | "position" | "stream"


class Gap(msgspec.Struct, frozen=True, gc=False):
    """Notifications may have been lost: resync before trusting events. `slots`: only
    for the Redis Cluster slots named (the symbols with an input or proposal key in one
    of them, `core.slots.touches`); None: every symbol. `detail`: what happened, for the
    resync's log line."""

    reason: str
    slots: frozenset[int] | None = None
    detail: str = ""


Event = Changed | Gap


# -- what the live runner needs from adapters ----------------------------------------------
class Started(Protocol):
    """Readiness signal (anyio's TaskStatus fits)."""

    def started(self, value: None = None) -> None: ...


class ChangeSource(Protocol):
    async def run(self, emit: Callable[[Event], None], *, task_status: Started) -> None:
        """Subscribe, signal readiness with task_status.started(), then emit forever."""
        ...


class InputReader(Protocol):
    async def fetch(
        self, symbols: Sequence[str], kinds: Sequence[int] | None = None
    ) -> list[SymbolInputs]:
        """The input hashes of `symbols`; with `kinds` (per symbol, `core.rounds.KIND_BITS`)
        at least those (a hash not asked for may be left None)."""
        ...

    async def discover(self) -> list[str]:
        """Symbols that have a position key or a proposal (used when SYMBOLS is '*')."""
        ...

    async def read_published(self, symbols: Sequence[str] | None) -> dict[str, Hash]:
        """Existing proposal hashes (all of them when `symbols` is None)."""
        ...


class Sink(Protocol):
    async def write(self, outputs: Sequence[Output]) -> None:
        """Write all outputs atomically. Raise WriteRefused when Redis answered no (it
        says what it applied all the same), WriteUncertain when the outcome is unknown,
        RedisUnavailable when nothing was written."""
        ...

    async def landed(self, outputs: Sequence[Output]) -> bool:
        """Whether a write that raised WriteUncertain was applied (RedisUnavailable while
        that cannot be told)."""
        ...


# -- observation hooks (metrics) ------------------------------------------------------------
class Observer(Protocol):
    """What the engine reports; called synchronously."""

    def on_publish(self, out: PublishOut) -> None: ...
    def on_retract(self, out: RetractOut) -> None: ...
    def on_defer(self, symbol: str, until: float) -> None:
        """A material change held back by the floor: published at `until` if still
        material then."""
        ...

    def on_invalid(self, symbol: str, reason: str) -> None: ...
    def on_compute(self, seconds: float) -> None: ...


class RunnerHooks(Protocol):
    """What the rounds and the live runner report; called synchronously."""

    def on_event(self, kind: str) -> None: ...
    def on_resync(self, reason: str) -> None: ...
    def on_latency(self, seconds: float) -> None: ...
    def on_cycle(self, tracked: int) -> None: ...


class NullHooks:
    """Observer and RunnerHooks that ignore everything (the default of both)."""

    def on_publish(self, out: PublishOut) -> None:
        pass

    def on_retract(self, out: RetractOut) -> None:
        pass

    def on_defer(self, symbol: str, until: float) -> None:
        pass

    def on_invalid(self, symbol: str, reason: str) -> None:
        pass

    def on_compute(self, seconds: float) -> None:
        pass

    def on_event(self, kind: str) -> None:
        pass

    def on_resync(self, reason: str) -> None:
        pass

    def on_latency(self, seconds: float) -> None:
        pass

    def on_cycle(self, tracked: int) -> None:
        pass
