"""Every exception the package raises, under one root (`HarvestError`).

Adapters translate library errors (redis-py, OS, msgspec) into these at their boundary;
the command line maps them to exit codes in one place (`cli.exits.exit_code_for`).
Pure: imports nothing at run time, so the core can raise them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harvest_async.core.ports import Output

__all__ = [
    "AuthenticationFailed",
    "ConfigError",
    "HarvestError",
    "KernelInputError",
    "NodeUnavailable",
    "PermissionDenied",
    "PlotUnavailable",
    "RecordingError",
    "RedisReplyError",
    "RedisServerError",
    "RedisUnavailable",
    "ReplyTimeout",
    "TimelineError",
    "UnsupportedServer",
    "WriteRefused",
    "WriteUncertain",
]


class HarvestError(Exception):
    """Base class for harvest-async errors."""


class ConfigError(HarvestError, ValueError):
    """A configuration value is invalid; `variable` names it (exit 2)."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


class UnsupportedServer(ConfigError):
    """REDIS_URL points at a server older than the oldest supported one (exit 2): not a
    passing outage to wait out but a deployment to fix (another server, or an upgrade)."""

    def __init__(self, message: str) -> None:
        super().__init__("REDIS_URL", message)


class KernelInputError(HarvestError, ValueError):
    """An input or tunable the kernel refuses; `field` names it (e.g. `position.entry_price`)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class RedisUnavailable(HarvestError):
    """Redis cannot be reached or refused us (connection, timeout, auth) (exit 3).
    `node`: on a cluster, the node (host, port) that could not be reached, when known."""

    node: tuple[str, int] | None = None


class NodeUnavailable(RedisUnavailable):
    """One node of a Redis Cluster cannot be reached: `node` (host, port), `slots` the
    slots it served (what a resync after it must cover; the rest of the cluster is up)."""

    def __init__(self, message: str, node: tuple[str, int], slots: frozenset[int]) -> None:
        super().__init__(message)
        self.node: tuple[str, int] | None = node
        self.slots = slots


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


class WriteRefused(RedisUnavailable):
    """Redis answered and refused (part of) a proposal write: OOM, READONLY, NOPERM,
    WRONGTYPE, BUSY, EXECABORT... The server is up; the write is to be retried later.
    `reply` is the server's error reply.

    `landed`: outputs Redis applied in full all the same; `touched`: outputs applied only
    in part (e.g. the hash replaced but its audit entry refused), so the proposal hash no
    longer says what was last confirmed; `collateral`: outputs Redis had accepted, not
    applied only because another one aborted the transaction. The rest were refused.
    `unreachable`: on a cluster, the node (host, port) whose part could not be sent at all
    (lost, not refusing: the outage reports it, not the refusals).
    """

    def __init__(
        self,
        reply: str,
        *,
        landed: Sequence[Output] = (),
        touched: Sequence[Output] = (),
        collateral: Sequence[Output] = (),
        unreachable: tuple[str, int] | None = None,
    ) -> None:
        super().__init__(f"Redis refused the proposal write: {reply}")
        self.reply = reply  # the server's words
        self.landed = tuple(landed)
        self.touched = tuple(touched)
        self.collateral = tuple(collateral)
        self.unreachable = unreachable


class RecordingError(HarvestError, ValueError):
    """A recording cannot be read: the message names the file and, when known, the line."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line
        self.reason = message


class TimelineError(HarvestError, ValueError):
    """A replay timeline cannot be read (the message names file and line)."""


class PlotUnavailable(HarvestError):
    """matplotlib is not installed (the `plot` extra)."""


class RedisServerError(HarvestError):
    """A server binary is missing or broken, or the server did not start or answer."""


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


class Fenced(WriteRefused):
    """The write script refused a write (in part) because this instance no longer holds
    its partition's lease at the epoch it was given (INTERFACE §6): another member owns
    the partition now. Nothing of the fenced outputs was written; they are not retried,
    their partition is given up."""
