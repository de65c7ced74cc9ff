"""The project's own exceptions; adapters translate Redis errors into these."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harvest_async.engine import Output


class HarvestError(Exception):
    """Base class for harvest-async errors."""


class RedisUnavailable(HarvestError):
    """Redis cannot be reached or refused us (connection, timeout, auth)."""


class WriteUncertain(RedisUnavailable):
    """A transaction's outcome is unknown (the connection dropped during EXEC)."""


class WriteRefused(RedisUnavailable):
    """Redis answered and refused (part of) a proposal write: OOM, READONLY, NOPERM,
    WRONGTYPE, BUSY, EXECABORT... The server is up; the write is to be retried later.
    `reply` is the server's error reply.

    `landed`: outputs Redis applied in full all the same; `touched`: outputs applied only
    in part (e.g. the hash replaced but its audit entry refused), so the proposal hash no
    longer says what was last confirmed; `collateral`: outputs Redis had accepted, not
    applied only because another one aborted the transaction. The rest were refused.
    """

    def __init__(
        self,
        reply: str,
        *,
        landed: Sequence[Output] = (),
        touched: Sequence[Output] = (),
        collateral: Sequence[Output] = (),
    ) -> None:
        super().__init__(f"Redis refused the proposal write: {reply}")
        self.reply = reply  # the server's words
        self.landed = tuple(landed)
        self.touched = tuple(touched)
        self.collateral = tuple(collateral)
