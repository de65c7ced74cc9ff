"""`--since` / `--until` for commands that read stream history: a stream ID or a time.

Accepted forms: a stream entry ID (`1767225600000-0`: that entry exactly), epoch seconds
(`1767225600` or `1767225600.25`) or an ISO-8601 time (`2026-01-01T00:00:00Z`; without an
offset it is UTC). A time covers whole milliseconds, the resolution of stream IDs: since
`T` starts at the first entry of millisecond ceil(T), until `T` ends after the last
entry of millisecond floor(T). Pure: no Redis, no clock.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from harvest_async.errors import ConfigError

__all__ = ["MAX_SEQ", "StreamBound", "entry_key", "parse_bound"]

MAX_SEQ = 2**64 - 1  # the largest sequence number of a stream ID
_ID = re.compile(r"^(\d+)-(\d+)$")
_EPOCH = re.compile(r"^\d+(\.\d*)?$")


class StreamBound:
    """One end of a window: a time (every entry of its millisecond) or one entry ID."""

    __slots__ = ("is_id", "ms", "seq", "text", "time")

    def __init__(self, text: str, time: float, ms: int, seq: int | None) -> None:
        self.text = text
        self.time = time  # epoch seconds: a recording's start or end
        self.ms = ms
        self.seq = seq  # None: a time, not an entry ID
        self.is_id = seq is not None

    @classmethod
    def at_time(cls, seconds: float) -> StreamBound:
        """The bound at epoch `seconds`."""
        return cls(repr(seconds), seconds, math.floor(seconds * 1000), None)

    def start_key(self) -> tuple[int, int]:
        """The first (ms, seq) a window starting here includes."""
        if self.seq is not None:
            return (self.ms, self.seq)
        return (math.ceil(round(self.time * 1000, 6)), 0)

    def end_key(self) -> tuple[int, int]:
        """The last (ms, seq) a window ending here includes."""
        if self.seq is not None:
            return (self.ms, self.seq)
        return (math.floor(round(self.time * 1000, 6)), MAX_SEQ)

    def xrange_start(self) -> str:
        ms, seq = self.start_key()
        return f"{ms}-{seq}"

    def xrange_end(self) -> str:
        ms, seq = self.end_key()
        return f"{ms}-{seq}"

    def __repr__(self) -> str:
        return f"StreamBound({self.text!r})"


def parse_bound(text: str, *, option: str) -> StreamBound:
    """A stream ID, epoch seconds or ISO-8601 time; ConfigError naming `option` if not."""
    value = text.strip()
    match = _ID.match(value)
    if match:
        ms, seq = int(match.group(1)), int(match.group(2))
        if seq > MAX_SEQ:
            raise ConfigError(option, f"stream ID sequence out of range: {text!r}")
        return StreamBound(value, ms / 1000, ms, seq)
    if _EPOCH.match(value):
        seconds = float(value)
    else:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ConfigError(
                option,
                "expected a stream ID (1767225600000-0), epoch seconds (1767225600) or an "
                f"ISO-8601 time (2026-01-01T00:00:00Z), got {text!r}",
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp()
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(option, f"time out of range: {text!r}")
    return StreamBound(value, seconds, math.floor(seconds * 1000), None)


def entry_key(entry_id: str) -> tuple[int, int]:
    """(ms, seq) of a stream entry ID, for ordering."""
    ms, _, seq = entry_id.partition("-")
    return (int(ms), int(seq or 0))
