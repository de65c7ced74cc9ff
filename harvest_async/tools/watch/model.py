"""What `watch` shows: one row per symbol, kept from proposal hashes and audit entries,
plus what decides whether those rows are live advice (the publishers' liveness, Redis
reachable, each proposal's `valid_until`)."""

from __future__ import annotations

import fnmatch
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from harvest_async.redis_io.liveness import Publisher

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

# --sort keys; "action" orders by urgency (a full close first, retractions last)
SORTS = ("symbol", "action", "kill", "r", "age")
_URGENCY = {a: i for i, a in enumerate(
    ("FULL_CLOSE_PROPOSED", "PARTIAL_75", "PARTIAL_50", "PARTIAL_25", "NONE")
)}  # fmt: skip


def use_color(stream: TextIO, mode: str = "auto") -> bool:
    if mode == "always":
        return True
    if mode == "never" or os.environ.get("NO_COLOR"):
        return False
    return stream.isatty() and os.environ.get("TERM", "") != "dumb"


def number(raw: str | None) -> float | None:
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


@dataclass(slots=True)
class Row:
    symbol: str
    fields: dict[str, str] | None  # None: retracted
    reason: str = ""
    changed_at: float = 0.0  # epoch seconds of the change (the hash's own ts_epoch if known)

    @property
    def action(self) -> str:
        return "RETRACTED" if self.fields is None else self.fields.get("harvest_action", "?")

    def published_at(self) -> float | None:
        if self.fields is None:
            return None
        return number(self.fields.get("ts_epoch")) or number(self.fields.get("last_update_epoch"))

    def expired(self, now: float) -> bool:
        """Past its `valid_until` (docs/outputs.md): no advice, whatever the hash says."""
        until = None if self.fields is None else number(self.fields.get("valid_until"))
        return until is not None and now > until

    def input_age(self, field_name: str, now: float) -> float | None:
        """An input's age now: its age when the proposal was computed plus the time since."""
        if self.fields is None:
            return None
        age, at = number(self.fields.get(field_name)), self.published_at()
        return None if age is None or at is None else age + max(0.0, now - at)


@dataclass(slots=True)
class WatchModel:
    kill_threshold: float = 0.6
    rows: dict[str, Row] = field(default_factory=dict)
    events: deque[tuple[float, str, str]] = field(default_factory=lambda: deque(maxlen=200))
    mode: str = "starting"  # notify | poll | snapshot
    mode_detail: str = ""  # why poll: the flags, or CONFIG GET refused
    status: str = ""  # the last problem, in full (shown wrapped, never cut)
    publishes: int = 0
    retractions: int = 0
    # None: not read yet; []: no live publisher (no liveness key)
    publishers: list[Publisher] | None = None
    redis_down_since: float | None = None  # Redis unreachable since then: rows are as last seen
    liveness_prefix: str = "quantum:harvest:publisher:"
    # a publisher group's partition owners (GROUP set; INTERFACE §6), None without one
    owners: dict[int, str | None] | None = None
    partitions: int = 64
    # a cluster's primaries lost while the others are watched, and the rows they hold
    lost_nodes: list[str] = field(default_factory=list)
    stale: set[str] = field(default_factory=set)

    def apply(self, symbol: str, fields: dict[str, str], now: float) -> bool:
        """A hash as just read; returns True if something changed. A new publish is
        stamped with the hash's own `ts_epoch` (when it was written), not with `now`."""
        row = self.rows.get(symbol)
        if fields:
            if row is not None and row.fields == fields:
                return False
            at = number(fields.get("ts_epoch")) or now
            self.rows[symbol] = Row(symbol, fields, "", min(at, now))
            self.publishes += 1
            action = fields.get("harvest_action", "?")
            self._event(
                min(at, now),
                action,
                f"{symbol:<12} {action:<19} {fields.get('trigger', '?'):<9} "
                f"R={num_text(fields.get('R_net'), '+.2f')} "
                f"K={num_text(fields.get('kill_score'))} "
                f"SL={sl_text(fields.get('new_sl_proposed'))}",
            )
            return True
        if row is None or row.fields is None:
            return False
        self.retract(symbol, "", now)
        return True

    def retract(self, symbol: str, reason: str, at: float, *, event: bool = True) -> None:
        row = self.rows.get(symbol)
        if row is not None and row.fields is None:
            if reason and not row.reason:
                row.reason = reason
                self._update_event(symbol, reason)
            return
        self.rows[symbol] = Row(symbol, None, reason, at)
        if event:
            self.retractions += 1
            self._event(at, "RETRACTED", self._retract_text(symbol, reason))

    def _event(self, at: float, kind: str, text: str) -> None:
        # kept in time order: a load finds old proposals, stamped with their own times
        self.events.append((at, kind, text))
        if len(self.events) > 1 and self.events[-2][0] > at:
            ordered = sorted(self.events, key=lambda e: e[0])
            self.events.clear()
            self.events.extend(ordered)

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

    # -- is what is shown live advice? -------------------------------------------------------
    def publisher_down(self) -> bool:
        return self.publishers is not None and not self.publishers

    def live(self) -> bool:
        """Whether the published rows are being maintained: Redis reachable and a
        publisher alive (each row can still be past its own valid_until)."""
        return self.redis_down_since is None and not self.publisher_down()

    def banners(self, now: float) -> list[tuple[str, str]]:
        """(text, SGR style) lines that say why the rows are not (all) live advice."""
        out: list[tuple[str, str]] = []
        if self.redis_down_since is not None:
            since = now - self.redis_down_since
            out.append(
                (
                    f"REDIS UNREACHABLE for {since:.0f} s: the rows are the last values seen, "
                    f"not live advice; retrying. {self.status}".rstrip(),
                    "1;37;41",
                )
            )
        elif self.publisher_down():
            out.append(
                (
                    f"NO LIVE PUBLISHER (no {self.liveness_prefix}* key): nothing maintains the "
                    "proposals below; they are not live advice until `harvest-async run` "
                    "runs again",
                    "1;37;41",
                )
            )
        elif self.status:
            out.append((self.status, "1;31"))
        if self.lost_nodes and self.redis_down_since is None:
            out.append(
                (
                    f"node {', '.join(self.lost_nodes)} unreachable: {len(self.stale)} rows "
                    "stale (the last values seen, dimmed: not live advice); the other rows "
                    "are live",
                    "1;37;41",
                )
            )
        expired = [r.symbol for r in self.rows.values() if r.expired(now)]
        if expired:
            out.append(
                (
                    f"{len(expired)} proposal(s) past valid_until (AGE shows 'exp'): no "
                    "advice, whatever they say",
                    "1;31",
                )
            )
        return out


def row_filter(patterns: Sequence[str]) -> Callable[[Row], bool]:
    """Rows whose symbol or action matches one of the globs (case-insensitive)."""
    globs = [p.strip().upper() for p in patterns if p.strip()]
    if not globs:
        return lambda row: True

    def keep(row: Row) -> bool:
        names = (row.symbol.upper(), row.action.upper())
        return any(fnmatch.fnmatchcase(name, g) for g in globs for name in names)

    return keep


def sort_key(sort: str, now: float) -> Callable[[Row], tuple[float, str]]:
    """Ordering for --sort: symbol; action (urgency); kill, r (highest first); age (oldest
    first). Retracted rows go last, ties by symbol."""

    def value(row: Row) -> float:
        if row.fields is None:
            return float("inf")
        if sort == "action":
            return float(_URGENCY.get(row.action, len(_URGENCY)))
        if sort in ("kill", "r"):
            raw = row.fields.get("kill_score" if sort == "kill" else "R_net")
            got = number(raw)
            return -got if got is not None else float("inf")
        if sort == "age":
            at = row.published_at()
            return at if at is not None else float("inf")
        return 0.0

    return lambda row: (value(row), row.symbol)


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
