"""Redis Cluster key slots, pure: which of the 16384 slots a key hashes to, which slots a
symbol's keys live in, and a slot set written as ranges for a log line.

A key's slot is CRC16 (XMODEM: `binascii.crc_hqx` from 0) of its hash tag (the part
inside the first `{...}` when that is not empty) or of the whole key, modulo 16384, as
the server computes it. The cluster adapter (`redis_io.cluster.topology`) routes with it;
the rounds use it to scope a resync to the symbols a topology change touched.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Set

from harvest_async.core.keys import Keys

__all__ = ["SLOTS", "describe_slots", "key_slot", "slot_ranges", "symbol_slots", "touches"]

SLOTS = 16384


def key_slot(key: str) -> int:
    data = key.encode()
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return binascii.crc_hqx(data, 0) % SLOTS


def symbol_slots(keys: Keys, symbol: str) -> tuple[int, int, int, int]:
    """The slots of `symbol`'s three input hashes and of its proposal hash."""
    return (
        key_slot(keys.marketstate(symbol)),
        key_slot(keys.risk(symbol)),
        key_slot(keys.position(symbol)),
        key_slot(keys.proposal(symbol)),
    )


def touches(keys: Keys, symbol: str, slots: Set[int]) -> bool:
    """Whether any of `symbol`'s keys (inputs or proposal) lives in one of `slots`."""
    return any(slot in slots for slot in symbol_slots(keys, symbol))


def slot_ranges(slots: Iterable[int]) -> list[tuple[int, int]]:
    """`slots` as sorted, maximal (first, last) ranges."""
    out: list[tuple[int, int]] = []
    for slot in sorted(set(slots)):
        if out and out[-1][1] == slot - 1:
            out[-1] = (out[-1][0], slot)
        else:
            out.append((slot, slot))
    return out


def describe_slots(slots: Iterable[int], *, most: int = 4) -> str:
    """E.g. "0-299, 5000" (at most `most` ranges, then how many more)."""
    ranges = slot_ranges(slots)
    shown = [f"{a}-{b}" if a != b else str(a) for a, b in ranges[:most]]
    if len(ranges) > most:
        shown.append(f"{len(ranges) - most} more ranges")
    return ", ".join(shown)
