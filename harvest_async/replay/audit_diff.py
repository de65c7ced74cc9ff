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

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec

from harvest_async.core.engine import EngineConfig
from harvest_async.core.ports import Output
from harvest_async.core.timefmt import iso_utc_ms
from harvest_async.redis_io.streams import history_client, stream_info
from harvest_async.replay.audit_export import audit_from_redis, read_audit_file, trim_note
from harvest_async.replay.replayer import ReplayStats, replay
from harvest_async.replay.stream_window import StreamBound

__all__ = [
    "AgainstAudit",
    "AuditCollector",
    "AuditDiff",
    "Decision",
    "Difference",
    "against_audit",
    "decision_of",
    "diff",
    "format_jsonl",
    "format_text",
    "is_redis_url",
    "replay_decisions",
]

KINDS = ("only_replay", "only_audit", "differs", "retraction_differs", "timing", "start_state")
_LABELS = {
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


# -- reports ---------------------------------------------------------------------------


def format_text(result: AuditDiff, *, replay_label: str, audit_label: str) -> str:
    """The summary table, then every difference in time order."""
    lines = [
        f"replay: {replay_label}",
        f"audit:  {audit_label}",
        f"window: {iso_utc_ms(result.start)} to {iso_utc_ms(result.end)} "
        f"({result.end - result.start:.1f} s); decisions = material publishes and "
        f"retractions (heartbeats excluded); tolerance {result.tolerance:g} s",
        "",
    ]
    head = (
        "symbol",
        "replay",
        "audit",
        "agree",
        "only-replay",
        "only-audit",
        "differ",
        "timing",
        "start",
    )
    table = [head]
    for row in result.symbols:
        c = row.counts
        table.append(
            (
                row.symbol,
                str(row.replay),
                str(row.audit),
                str(row.agree),
                str(c["only_replay"]),
                str(c["only_audit"]),
                str(c["differs"] + c["retraction_differs"]),
                str(c["timing"]),
                str(c["start_state"]),
            )
        )
    widths = [max(len(r[k]) for r in table) for k in range(len(head))]
    for r in table:
        cells = [r[0].ljust(widths[0])] + [
            v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    if result.differences:
        lines.append("")
        lines.append("differences, in time order:")
        for d in result.differences:
            lines.extend(_describe(d, result.start))
    lines.append("")
    differ = sum(1 for row in result.symbols if row.differs)
    if result.agrees:
        lines.append(f"agree: {len(result.symbols)} symbols, the same decisions")
    else:
        counted = sum(1 for d in result.differences if d.counted)
        lines.append(f"DIFFER: {counted} differences in {differ} of {len(result.symbols)} symbols")
    return "\n".join(lines) + "\n"


def _describe(d: Difference, start: float) -> list[str]:
    note = "" if d.counted else " (not counted: at the window's end)"
    detail = f": {d.detail}" if d.detail else ""
    out = [
        f"  +{d.at - start:.3f} s ({iso_utc_ms(d.at)}) {d.symbol}: {_LABELS[d.kind]}{detail}{note}"
    ]
    if d.replay is not None:
        out.append(f"      replay: {d.replay.describe()} at +{d.replay.at - start:.3f} s")
    if d.audit is not None:
        where = " (live state at the start)" if d.audit.start_state else ""
        ref = f" [{d.audit.ref}]" if d.audit.ref else ""
        out.append(f"      audit:  {d.audit.describe()} at +{d.audit.at - start:.3f} s{where}{ref}")
    return out


def format_jsonl(result: AuditDiff) -> bytes:
    """One JSON object per difference, then one per symbol, then the totals."""
    encode = msgspec.json.encode
    out: list[bytes] = []
    for d in result.differences:
        out.append(
            encode(
                {
                    "type": "difference",
                    "kind": d.kind,
                    "symbol": d.symbol,
                    "at": d.at,
                    "counted": d.counted,
                    "detail": d.detail,
                    "replay": None if d.replay is None else d.replay.brief(),
                    "audit": None if d.audit is None else d.audit.brief(),
                }
            )
        )
    for row in result.symbols:
        out.append(
            encode(
                {
                    "type": "symbol",
                    "symbol": row.symbol,
                    "replay": row.replay,
                    "audit": row.audit,
                    "agree": row.agree,
                    **row.counts,
                }
            )
        )
    totals = dict.fromkeys(KINDS, 0)
    for row in result.symbols:
        for kind, n in row.counts.items():
            totals[kind] += n
    out.append(
        encode(
            {
                "type": "summary",
                "agrees": result.agrees,
                "start": result.start,
                "end": result.end,
                "tolerance": result.tolerance,
                "symbols": len(result.symbols),
                **totals,
            }
        )
    )
    return b"\n".join(out) + b"\n"


# -- the whole command -----------------------------------------------------------------


def is_redis_url(source: str) -> bool:
    return source.startswith(("redis://", "rediss://", "unix://"))


@dataclass(slots=True)
class AgainstAudit:
    result: AuditDiff
    stats: ReplayStats
    audit_entries: int
    notes: list[str]


def against_audit(
    path: str | os.PathLike[str],
    config: EngineConfig,
    source: str,
    *,
    stream: str,
    password: str | None = None,
    tolerance: float,
    reconcile_every: float | None = None,
) -> AgainstAudit:
    """Replay `path`, read the audit from `source` (a Redis URL: `stream` there; else an
    exported JSONL file) over the replay's window, and diff them."""
    replayed, stats = replay_decisions(path, config, reconcile_every=reconcile_every)
    lookback = config.gate.heartbeat_sec + tolerance + 1.0
    collector = AuditCollector(
        stats.start,
        stats.end,
        None if config.symbols is None else frozenset(config.symbols),
    )
    notes: list[str] = []
    if is_redis_url(source):
        notes.extend(_collect_from_redis(collector, source, stream, password, lookback))
    else:
        collector.add_all(read_audit_file(source))
        if collector.first_at is None:
            notes.append(f"{source} has no audit entry in the recording's window")
        elif collector.first_at > stats.start:
            notes.append(
                f"{source} has no entry at or before the recording's start: the live state "
                "there is unknown (export from one heartbeat before the start)"
            )
    result = diff(
        replayed, collector.sides(), start=stats.start, end=stats.end, tolerance=tolerance
    )
    return AgainstAudit(result, stats, collector.entries, notes)


def _collect_from_redis(
    collector: AuditCollector, url: str, stream: str, password: str | None, lookback: float
) -> list[str]:
    since = StreamBound.at_time(max(0.0, collector.start - lookback))
    until = StreamBound.at_time(collector.end)

    async def main() -> list[str]:
        client = history_client(url, password, name="harvest-async-replay")
        try:
            info = await stream_info(client, stream, option="--audit-stream")
            async for page in audit_from_redis(client, stream, since, until):
                collector.add_all(page)
        finally:
            await client.aclose()
        note = trim_note(info, since.time)
        return [note] if note else []

    return anyio.run(main)
