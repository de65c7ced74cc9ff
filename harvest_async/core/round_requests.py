"""What a round asks of its driver (sans-I/O, `core.rounds`): each request is answered by
the live runner from Redis and by the replayer from a recording."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import msgspec

from harvest_async.core.input_hashes import SymbolInputs
from harvest_async.core.ports import Output

__all__ = [
    "ALL_KINDS",
    "KIND_BITS",
    "Discover",
    "Fetch",
    "ReadPublished",
    "Request",
    "Step",
    "Write",
    "merge_partial",
]

# which input hashes a Fetch reads, one bit each; a notification names the hash that
# changed, so a symbol the engine holds needs only that one read again
KIND_BITS = {"marketstate": 1, "risk": 2, "position": 4}
ALL_KINDS = 7


class Discover(msgspec.Struct, frozen=True, gc=False):
    """Answer: the symbols with a position key or a proposal (list[str])."""


class ReadPublished(msgspec.Struct, frozen=True, gc=False):
    """Answer: the proposal hashes in place (dict[str, Hash]); all of them for None."""

    symbols: list[str] | None


class Fetch(msgspec.Struct, frozen=True, gc=False):
    """Answer: the input hashes of `symbols` (list[SymbolInputs], same order). `kinds`
    (None: all three of every symbol): per symbol, the KIND_BITS of the hashes to read;
    the others may be left None in the answer (the round keeps what the engine holds)."""

    symbols: list[str]
    kinds: list[int] | None = None


class Write(msgspec.Struct, frozen=True, gc=False):
    """Write `outputs` and confirm them to the engine (answer: None), or raise: a failed
    write is thrown back into the round. `seen`: when each symbol was first seen dirty
    (monotonic seconds), for latency."""

    outputs: list[Output]
    seen: dict[str, float]


Request = Discover | ReadPublished | Fetch | Write
Step = Generator[Request, Any, None]


def merge_partial(old: SymbolInputs | None, new: SymbolInputs, mask: int) -> SymbolInputs:
    """The hashes read (`mask`) from `new`, the others as the engine holds them."""
    if mask == ALL_KINDS or old is None:
        return new
    return SymbolInputs(
        new.symbol,
        new.marketstate if mask & 1 else old.marketstate,
        new.risk if mask & 2 else old.risk,
        new.position if mask & 4 else old.position,
    )
