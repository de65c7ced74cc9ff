"""What doctor found: the checks, the exit status, and their text and JSON forms."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from harvest_async.core.timefmt import age_text

__all__ = ["CHECK_NAMES", "Check", "Context", "Report", "Status", "names", "render_text"]

Status = Literal["PASS", "WARN", "FAIL"]

CHECK_NAMES: tuple[str, ...] = (
    "redis",
    "notifications",
    "inputs",
    "publisher",
    "proposals",
    "stream",
)

# how many problem symbols/keys a text line names before saying "and N more"
_NAME_LIMIT = 5
_DETAIL_LIMIT = 10


class Check(msgspec.Struct, kw_only=True):
    name: str
    status: Status
    message: str
    action: str = ""  # what to do; a check that passed asks for nothing
    details: dict[str, Any] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status == "PASS":
            self.action = ""


class Report(msgspec.Struct, kw_only=True):
    redis: str
    checks: list[Check]
    unreachable: bool = False

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "FAIL"]

    @property
    def exit_code(self) -> int:
        if self.unreachable:
            return 3
        return 1 if self.failed else 0

    def to_json(self) -> bytes:
        body = {
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "redis": self.redis,
            "checks": self.checks,
        }
        return msgspec.json.encode(body)


class Context:
    """What later checks learn from earlier ones (None: that check did not run)."""

    def __init__(self) -> None:
        self.open_positions: int | None = None
        self.advisable: int | None = None  # open positions whose inputs are usable
        self.proposals = 0


def names(items: Sequence[str], limit: int = _NAME_LIMIT) -> str:
    """`A, B, C and 4 more`."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def render_text(report: Report) -> str:
    width = max(len(c.name) for c in report.checks) if report.checks else 6
    pad = " " * (6 + width + 2)
    lines = [f"harvest-async doctor: {report.redis}"]
    for check in report.checks:
        lines.append(f"{check.status:<4}  {check.name:<{width}}  {check.message}")
        if check.status != "PASS" and check.action:
            lines.append(f"{pad}-> {check.action}")
        if check.name == "inputs" and check.status != "PASS":
            lines.extend(pad + line for line in _input_problems(check))
    counts = {s: sum(1 for c in report.checks if c.status == s) for s in ("PASS", "WARN", "FAIL")}
    lines.append(
        f"{counts['PASS']} passed, {counts['WARN']} warnings, {counts['FAIL']} failed"
        + ("; Redis unreachable" if report.unreachable else "")
    )
    return "\n".join(lines)


def _input_problems(check: Check) -> list[str]:
    """One line per symbol without advice, with its inputs' ages (the first few)."""
    per = check.details.get("per_symbol", {})
    problems = check.details.get("problems", [])
    lines = []
    for sym in problems[:_DETAIL_LIMIT]:
        entry = per[sym]
        ages = ", ".join(
            f"{k.removesuffix('_age_sec')} {age_text(v)}"
            for k in ("marketstate_age_sec", "risk_age_sec", "position_age_sec")
            if (v := entry.get(k)) is not None
        )
        lines.append(
            f"   {sym}: {entry['state']}: {entry.get('detail', '')}"
            + (f" (ages: {ages})" if ages else "")
        )
    if len(problems) > _DETAIL_LIMIT:
        lines.append(f"   ... and {len(problems) - _DETAIL_LIMIT} more (--json)")
    return lines
