"""`replay --against-audit`: the replay's decisions diffed with the audit stream's.

What is compared is the live/replay parity guarantee: per symbol and in time order the
same *decisions* (material publishes and retractions; heartbeats are not decisions),
each at the same time within a tolerance (default: the floor, PUBLISH_INTERVAL_SEC).
Both sides go through one function (`decision_of`) from the audit stream's fields: the
replay's outputs as `Output.audit_fields()`, the audit's entries as written.

A publish is the same decision when action, proposed SL and plan_id are equal; a
retraction when its reason's label (`stale_marketstate`, `flat`, ...) is. Per symbol,
the two sequences are aligned greedily in time: a pair of equal decisions closer than
the tolerance agrees; otherwise a nearby match further along one side makes what is
skipped on that side *missing from the other*, equal decisions further apart are a
*timing* difference, different ones closer than the tolerance *differ*.

The edges of the window:

* start: the replay starts from scratch (startup publishes at the recording's start);
  the live service had published before. The audit's last entry per symbol at or before
  the start (read from one heartbeat earlier) stands for the live state there and is
  compared with the replay's startup publish by action and SL (plan_id may differ: the
  kill score drifts with the position's age between the two). If a live decision
  follows within the tolerance, the live state at the start was superseded right away
  and is not a difference.
* end: a decision missing on one side within the tolerance before the end may fall
  just after it on the other side: shown, not counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec

from harvest_async.replay.audit_decisions import KINDS, Decision

__all__ = ["AuditDiff", "Difference", "SymbolDiff", "diff"]

# -- the diff --------------------------------------------------------------------------


class Difference(msgspec.Struct):
    kind: str
    symbol: str
    at: float
    replay: Decision | None
    audit: Decision | None
    detail: str = ""
    counted: bool = True  # False: at the window's end, may fall on the other side of it


class SymbolDiff(msgspec.Struct):
    symbol: str
    replay: int  # decisions (the live state at the start counts on the audit side)
    audit: int
    agree: int = 0
    counts: dict[str, int] = {}

    @property
    def differs(self) -> bool:
        return any(self.counts.values())


@dataclass(slots=True)
class AuditDiff:
    start: float
    end: float
    tolerance: float
    symbols: list[SymbolDiff]
    differences: list[Difference]  # in time order, uncounted ones included

    @property
    def agrees(self) -> bool:
        return not any(d.counted for d in self.differences)


def _same(x: Decision, y: Decision) -> bool:
    if x.event != y.event:
        return False
    if x.event == "retract":
        return x.label == y.label
    if x.start_state or y.start_state:  # plan_id may differ there (see the module doc)
        return x.action == y.action and x.new_sl == y.new_sl
    return x.action == y.action and x.new_sl == y.new_sl and x.plan_id == y.plan_id


def _find(side: Sequence[Decision], begin: int, target: Decision, tolerance: float) -> int | None:
    """The first index from `begin` whose decision equals `target` within the tolerance."""
    for k in range(begin, len(side)):
        candidate = side[k]
        if candidate.at >= target.at + tolerance:
            return None
        if abs(candidate.at - target.at) < tolerance and _same(candidate, target):
            return k
    return None


def _what_differs(x: Decision, y: Decision) -> str:
    if x.event != y.event:
        return f"replay {x.event}, audit {y.event}"
    if x.event == "retract":
        return "retraction reason"
    parts = [
        name
        for name, a, b in (
            ("action", x.action, y.action),
            ("SL", x.new_sl, y.new_sl),
            ("plan_id", x.plan_id, y.plan_id),
        )
        if a != b
    ]
    return ", ".join(parts)


def _align(
    symbol: str, replayed: Sequence[Decision], audited: Sequence[Decision], tolerance: float
) -> tuple[int, list[Difference]]:
    """Greedy in-order alignment (module doc); returns (agreeing pairs, differences)."""
    out: list[Difference] = []
    agree = 0
    i = j = 0
    while i < len(replayed) and j < len(audited):
        x, y = replayed[i], audited[j]
        dt = abs(x.at - y.at)
        if dt < tolerance and _same(x, y):
            agree += 1
            i += 1
            j += 1
            continue
        jx = _find(audited, j + 1, x, tolerance)
        iy = _find(replayed, i + 1, y, tolerance)
        if jx is not None and (iy is None or audited[jx].at <= replayed[iy].at):
            out.extend(_only(symbol, None, a) for a in audited[j:jx])
            j = jx
        elif iy is not None:
            out.extend(_only(symbol, r, None) for r in replayed[i:iy])
            i = iy
        elif _same(x, y) or dt < tolerance:
            if _same(x, y):
                kind, detail = "timing", f"{x.at - y.at:+.3f} s (replay - audit)"
            elif x.event == y.event == "retract":
                kind, detail = "retraction_differs", _what_differs(x, y)
            else:
                kind, detail = "differs", _what_differs(x, y)
            if x.start_state or y.start_state:
                kind = "start_state"
            out.append(Difference(kind, symbol, min(x.at, y.at), x, y, detail))
            i += 1
            j += 1
        elif x.at <= y.at:
            out.append(_only(symbol, x, None))
            i += 1
        else:
            out.append(_only(symbol, None, y))
            j += 1
    out.extend(_only(symbol, r, None) for r in replayed[i:])
    out.extend(_only(symbol, None, a) for a in audited[j:])
    return agree, out


def _only(symbol: str, x: Decision | None, y: Decision | None) -> Difference:
    one = x if x is not None else y
    assert one is not None
    kind = "only_replay" if y is None else "only_audit"
    if one.start_state or (x is not None and x.trigger == "startup"):
        kind = "start_state"
    return Difference(kind, symbol, one.at, x, y)


def _settle_edges(
    differences: list[Difference], audited: Sequence[Decision], end: float, tolerance: float
) -> list[Difference]:
    """Apply the edge rules (module doc): a superseded live start state is dropped; a
    one-sided decision just before the end is not counted."""
    kept: list[Difference] = []
    for d in differences:
        y = d.audit
        if d.replay is None and y is not None and y.start_state:
            superseded = any(not a.start_state and a.at - y.at < tolerance for a in audited)
            if superseded:
                continue
        if (d.replay is None or d.audit is None) and d.at > end - tolerance:
            d.counted = False
        kept.append(d)
    return kept


def diff(
    replayed: Mapping[str, Sequence[Decision]],
    audited: Mapping[str, Sequence[Decision]],
    *,
    start: float,
    end: float,
    tolerance: float,
) -> AuditDiff:
    """Compare per symbol (both sides in time order; the audit side may begin with its
    state at the start, see AuditCollector.sides)."""
    rows: list[SymbolDiff] = []
    everything: list[Difference] = []
    for symbol in sorted(set(replayed) | set(audited)):
        r = replayed.get(symbol, ())
        a = audited.get(symbol, ())
        agree, found = _align(symbol, r, a, tolerance)
        found = _settle_edges(found, a, end, tolerance)
        counts = dict.fromkeys(KINDS, 0)
        for d in found:
            if d.counted:
                counts[d.kind] += 1
        rows.append(SymbolDiff(symbol, len(r), len(a), agree, counts))
        everything.extend(found)
    everything.sort(key=lambda d: (d.at, d.symbol))
    return AuditDiff(start, end, tolerance, rows, everything)
