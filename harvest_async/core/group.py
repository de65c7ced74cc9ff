"""Publisher groups (INTERFACE §6), the pure part: which live member owns each partition.

Rendezvous (highest random weight) hashing: every (member, partition) pair gets a score
from blake2b (the same on every host and Python version, never the salted `hash()`), and
a partition goes to its highest-scoring member. Plain HRW moves only a leaver's or a
joiner's share, but its spread is binomial (64 partitions over 3 members: ±4 is common),
so the assignment is HRW with bounded load: pairs are taken best score first, and a member
that holds ceil(P/N) partitions takes no more. Every member computes the same table from
the same member set; while their views differ (a join seen by some first) two may want one
partition, and the lease (redis_io.leases) decides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from harvest_async.core.partition import partition_of

__all__ = [
    "Membership",
    "assign",
    "live_members",
    "owned_by",
    "partition_of",
    "score",
    "symbols_by_partition",
]


def score(member: str, partition: int) -> int:
    """The weight of `member` for `partition` (64 bits, stable)."""
    data = b"%d\x00%b" % (partition, member.encode())
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def assign(members: Iterable[str], partitions: int) -> dict[int, str]:
    """partition -> owner over `members` (empty: no owner for any)."""
    names = sorted(set(members))
    if not names or partitions <= 0:
        return {}
    cap = -(-partitions // len(names))  # ceil: every partition finds a member below it
    pairs = sorted(
        ((score(m, p), m, p) for m in names for p in range(partitions)),
        key=lambda t: (-t[0], t[1], t[2]),
    )
    owner: dict[int, str] = {}
    load = dict.fromkeys(names, 0)
    for _, member, part in pairs:
        if part in owner or load[member] >= cap:
            continue
        owner[part] = member
        load[member] += 1
        if len(owner) == partitions:
            break
    return owner


def owned_by(member: str, members: Iterable[str], partitions: int) -> frozenset[int]:
    """The partitions `member` should own when `members` (it included) are live."""
    table = assign({*members, member}, partitions)
    return frozenset(p for p, m in table.items() if m == member)


class Membership:
    """One member's view of a group's live members, from their liveness beats."""

    def __init__(self, group: str, instance: str, *, dead_after: float) -> None:
        self.group = group
        self.instance = instance
        self.dead_after = dead_after  # a member whose last beat is older is gone

    def live(self, beats: Mapping[str, tuple[str, float | None]], now: float) -> list[str]:
        """`beats`: instance -> (its group, its last beat epoch). Always includes self."""
        return live_members(beats, self.group, now, self.dead_after, self.instance)


def live_members(
    beats: Mapping[str, tuple[str, float | None]],
    group: str,
    now: float,
    dead_after: float,
    me: str | None = None,
) -> list[str]:
    """The members of `group` that beat within `dead_after` seconds (sorted)."""
    out = {
        name
        for name, (member_of, beat) in beats.items()
        if member_of == group and beat is not None and now - beat <= dead_after
    }
    if me is not None:
        out.add(me)
    return sorted(out)


def symbols_by_partition(symbols: Iterable[str], partitions: int) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for symbol in symbols:
        out.setdefault(partition_of(symbol, partitions), []).append(symbol)
    return out
