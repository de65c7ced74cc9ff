"""Times and durations as people read them: one place, so every tool says it the same way."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["age_text", "clock_utc", "iso_utc", "iso_utc_ms"]


def iso_utc(epoch: float) -> str:
    """ISO-8601 in UTC with microseconds and offset (the proposal's `computed_at_utc`)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def iso_utc_ms(epoch: float) -> str:
    """ISO-8601 in UTC to the centisecond, `Z` suffix (reports)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def clock_utc(epoch: float) -> str:
    """HH:MM:SS in UTC (live displays)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S")


def age_text(seconds: float, *, compact: bool = False) -> str:
    """A duration: `12.5 s`, `14 min`, `2.1 h`; compact (table cells): `12s`, `5m03s`, `2.1h`."""
    if compact:
        seconds = max(0.0, seconds)
        if seconds < 60:
            return f"{seconds:.0f}s"
        if seconds < 3600:
            return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
        return f"{seconds / 3600:.1f}h"
    if seconds < 600:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
