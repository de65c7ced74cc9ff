"""The project's own exceptions; adapters translate Redis errors into these."""

from __future__ import annotations


class HarvestError(Exception):
    """Base class for harvest-async errors."""


class RedisUnavailable(HarvestError):
    """Redis cannot be reached or refused us (connection, timeout, auth)."""


class WriteUncertain(RedisUnavailable):
    """A transaction's outcome is unknown (the connection dropped during EXEC)."""


class PermissionDenied(RedisUnavailable):
    """Redis refused a command, key or channel to our ACL user (NOPERM).

    A configuration error: at startup the command exits 2 with this one line; while
    running (the ACL changed under us) the affected work waits and is retried.
    `what` names what was refused (`command HMGET`, `write access to key ...`)."""

    def __init__(self, what: str, detail: str = "") -> None:
        hint = f" ({detail})" if detail else ""
        super().__init__(
            f"permission denied: {what}{hint}; grant it to the Redis ACL user "
            "(docs/operations.md lists the ACL the service needs)"
        )
        self.what = what
