"""Which of N partitions a symbol belongs to: a stable hash of its name, the same on every
host, process and Python version (never Python's salted `hash()`). Used by `replay --jobs`
and by publisher groups. Pure."""

from __future__ import annotations

import hashlib

__all__ = ["partition_of"]


def partition_of(symbol: str, partitions: int) -> int:
    """0 <= result < partitions."""
    digest = hashlib.blake2b(symbol.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions
