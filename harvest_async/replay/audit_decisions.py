"""Decisions as `--against-audit` compares them: read from the audit stream or made by a replay."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from harvest_async.core.engine import EngineConfig
from harvest_async.core.ports import Output
from harvest_async.replay.replayer import ReplayStats, replay

__all__ = ["KINDS", "LABELS", "AuditCollector", "Decision", "decision_of", "replay_decisions"]

KINDS = ("only_replay", "only_audit", "differs", "retraction_differs", "timing", "start_state")
LABELS = {
    "only_replay": "only in the replay",
    "only_audit": "only in the audit",
    "differs": "different decision",
    "retraction_differs": "different retraction",
    "timing": "same decision, timing outside the tolerance",
    "start_state": "state at the start differs",
}


class Decision(msgspec.Struct, frozen=True):
    """One audit-shaped entry, as far as decisions go."""

    at: float
    event: str  # "publish" | "retract"
    action: str = ""  # harvest_action (publish)
    new_sl: str = ""
    plan_id: str = ""
    trigger: str = ""
    reason: str = ""  # retract
    ref: str = ""  # the audit entry's ID (or file:line); "" for the replay
    start_state: bool = False  # the live state at the recording's start, not an event

    @property
    def label(self) -> str:
        return self.reason.split(":", 1)[0]

    def describe(self) -> str:
        if self.event == "retract":
            return f"retract ({self.reason})"
        sl = "" if self.new_sl in ("", "None") else f" SL {self.new_sl}"
        return f"{self.action}{sl} plan {self.plan_id} ({self.trigger})"

    def brief(self) -> dict[str, Any]:
        out: dict[str, Any] = {"at": self.at, "event": self.event}
        if self.event == "publish":
            out.update(
                action=self.action, new_sl=self.new_sl, plan_id=self.plan_id, trigger=self.trigger
            )
        else:
            out["reason"] = self.reason
        if self.ref:
            out["ref"] = self.ref
        if self.start_state:
            out["start_state"] = True
        return out


def decision_of(fields: Mapping[str, str], ref: str = "") -> Decision | None:
    """The decision an audit-shaped entry records (heartbeats included); None for
    anything else or an entry without a usable time."""
    event = fields.get("event")
    try:
        at = float(fields.get("ts_epoch", ""))
    except ValueError:
        return None
    if not math.isfinite(at):
        return None
    if event == "publish":
        return Decision(
            at,
            "publish",
            action=fields.get("harvest_action", ""),
            new_sl=fields.get("new_sl_proposed", ""),
            plan_id=fields.get("plan_id", ""),
            trigger=fields.get("trigger", ""),
            ref=ref,
        )
    if event == "retract":
        return Decision(at, "retract", reason=fields.get("reason", ""), ref=ref)
    return None


def _is_decision(d: Decision) -> bool:
    return d.trigger != "heartbeat"


# -- the two sides ---------------------------------------------------------------------


@dataclass(slots=True)
class AuditCollector:
    """Audit entries -> per-symbol decisions in (start, end], and the last entry per
    symbol at or before `start` (the live state there)."""

    start: float
    end: float
    symbols: frozenset[str] | None = None
    decisions: dict[str, list[Decision]] = field(default_factory=dict)
    at_start: dict[str, Decision] = field(default_factory=dict)
    entries: int = 0
    first_at: float | None = None

    def add(self, ref: str, fields: Mapping[str, str]) -> None:
        symbol = fields.get("symbol")
        if not symbol or (self.symbols is not None and symbol not in self.symbols):
            return
        decision = decision_of(fields, ref)
        if decision is None:
            return
        self.entries += 1
        if self.first_at is None or decision.at < self.first_at:
            self.first_at = decision.at
        if decision.at <= self.start:
            self.at_start[symbol] = decision
        elif decision.at <= self.end and _is_decision(decision):
            self.decisions.setdefault(symbol, []).append(decision)

    def add_all(self, entries: Iterable[tuple[str, Mapping[str, str]]]) -> None:
        for ref, fields in entries:
            self.add(ref, fields)

    def sides(self) -> dict[str, list[Decision]]:
        """Per symbol: the live state at the start (a publish) then the decisions."""
        out: dict[str, list[Decision]] = {}
        for symbol in sorted(set(self.decisions) | set(self.at_start)):
            listed = sorted(self.decisions.get(symbol, []), key=_at)
            state = self.at_start.get(symbol)
            if state is not None and state.event == "publish":
                listed.insert(0, msgspec.structs.replace(state, at=self.start, start_state=True))
            if listed:
                out[symbol] = listed
        return out


def _at(d: Decision) -> float:
    return d.at


def replay_decisions(
    path: str | os.PathLike[str], config: EngineConfig, *, reconcile_every: float | None = None
) -> tuple[dict[str, list[Decision]], ReplayStats]:
    """Replay the recording; its decisions per symbol, through the audit's fields."""
    per_symbol: dict[str, list[Decision]] = {}

    def collect(outputs: list[Output]) -> None:
        for out in outputs:
            decision = decision_of(out.audit_fields())
            if decision is not None and _is_decision(decision):
                per_symbol.setdefault(out.symbol, []).append(decision)

    stats = replay(path, config, collect, reconcile_every=reconcile_every)
    return per_symbol, stats
