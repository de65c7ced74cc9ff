"""What `watch` shows: one row per symbol, kept from proposal hashes and audit entries."""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from typing import TextIO

# SGR colour codes per action: NONE dim, the partials green -> yellow, full close red
ACTION_STYLE = {
    "NONE": "2",
    "PARTIAL_25": "32",
    "PARTIAL_50": "33",
    "PARTIAL_75": "1;33",
    "FULL_CLOSE_PROPOSED": "1;31",
    "RETRACTED": "35",
}
RESET = "\x1b[0m"
KEEP_RETRACTED_SEC = 300.0  # retracted rows stay this long unless the symbol comes back
HIGHLIGHT_SEC = 1.5  # a changed row's symbol is bold this long
EVENT_LINES = 8


def use_color(stream: TextIO, mode: str = "auto") -> bool:
    if mode == "always":
        return True
    if mode == "never" or os.environ.get("NO_COLOR"):
        return False
    return stream.isatty() and os.environ.get("TERM", "") != "dumb"


@dataclass(slots=True)
class Row:
    symbol: str
    fields: dict[str, str] | None  # None: retracted
    reason: str = ""
    changed_at: float = 0.0  # epoch seconds of the last change seen


@dataclass(slots=True)
class WatchModel:
    kill_threshold: float = 0.6
    rows: dict[str, Row] = field(default_factory=dict)
    events: deque[tuple[float, str, str]] = field(default_factory=lambda: deque(maxlen=200))
    mode: str = "starting"
    status: str = ""
    publishes: int = 0
    retractions: int = 0

    def apply(self, symbol: str, fields: dict[str, str], now: float) -> bool:
        """A hash as just read; returns True if something changed."""
        row = self.rows.get(symbol)
        if fields:
            if row is not None and row.fields == fields:
                return False
            self.rows[symbol] = Row(symbol, fields, "", now)
            self.publishes += 1
            action = fields.get("harvest_action", "?")
            self.events.append(
                (
                    now,
                    action,
                    f"{symbol:<12} {action:<19} {fields.get('trigger', '?'):<9} "
                    f"R={num_text(fields.get('R_net'), '+.2f')} "
                    f"K={num_text(fields.get('kill_score'))} "
                    f"SL={sl_text(fields.get('new_sl_proposed'))}",
                )
            )
            return True
        if row is None or row.fields is None:
            return False
        self.retract(symbol, "", now)
        return True

    def retract(self, symbol: str, reason: str, now: float, *, event: bool = True) -> None:
        row = self.rows.get(symbol)
        if row is not None and row.fields is None:
            if reason and not row.reason:
                row.reason = reason
                self._update_event(symbol, reason)
            return
        self.rows[symbol] = Row(symbol, None, reason, now)
        if event:
            self.retractions += 1
            self.events.append((now, "RETRACTED", self._retract_text(symbol, reason)))

    def _retract_text(self, symbol: str, reason: str) -> str:
        return f"{symbol:<12} {'RETRACTED':<19} {reason or '(reason not in the stream)'}"

    def _update_event(self, symbol: str, reason: str) -> None:
        for i in range(len(self.events) - 1, -1, -1):
            at, kind, text = self.events[i]
            if kind == "RETRACTED" and text.startswith(f"{symbol:<12} "):
                self.events[i] = (at, kind, self._retract_text(symbol, reason))
                return

    def prune(self, now: float) -> None:
        for symbol in [
            s
            for s, r in self.rows.items()
            if r.fields is None and now - r.changed_at > KEEP_RETRACTED_SEC
        ]:
            del self.rows[symbol]


def num_text(raw: str | None, fmt: str = ".3f") -> str:
    try:
        return format(float(raw or ""), fmt)
    except ValueError:
        return "-"


def sl_text(raw: str | None) -> str:
    if raw in (None, "", "None"):
        return "-"
    try:
        return f"{float(raw):.8g}"
    except ValueError:
        return "?"
