"""The project's own exceptions; adapters translate Redis errors into these."""

from __future__ import annotations


class HarvestError(Exception):
    """Base class for harvest-async errors."""


class RedisUnavailable(HarvestError):
    """Redis cannot be reached or refused us (connection, timeout, auth)."""


class WriteUncertain(RedisUnavailable):
    """A transaction's outcome is unknown (the connection dropped during EXEC)."""
