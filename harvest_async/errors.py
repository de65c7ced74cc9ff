"""The project's own exceptions; adapters translate Redis errors into these."""

from __future__ import annotations


class HarvestError(Exception):
    """Base class for harvest-async errors."""


class RedisUnavailable(HarvestError):
    """Redis cannot be reached or refused us (connection, timeout, auth)."""


class WriteUncertain(RedisUnavailable):
    """A request was sent but its outcome is unknown (the connection dropped, or no reply
    came in time, before all its replies were read)."""


class AuthenticationFailed(RedisUnavailable):
    """Redis refused our credentials (wrong password or ACL user, or one is required)."""


class ReplyTimeout(WriteUncertain):
    """A request was sent and no reply came in time: it may still run on the server."""


class RedisReplyError(HarvestError):
    """A command's error reply. The wire returns these as values, not raised.

    `code` is the reply's first word (WRONGTYPE, OOM, NOPERM, READONLY, EXECABORT,
    NOSCRIPT, BUSY, LOADING, ...): classify by it, never by the message's text.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = message.partition(" ")[0]
