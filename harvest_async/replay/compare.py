"""Compare two replays of one recording (A: current tunables, B: another file's) per symbol."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import msgspec

from harvest_async.core.engine import EngineConfig
from harvest_async.core.ports import Output, PublishOut
from harvest_async.core.timefmt import iso_utc_ms
from harvest_async.replay.replayer import ReplayStats, replay

# -- compare --------------------------------------------------------------------------


__all__ = ["Decided", "SymbolComparison", "compare", "format_comparison"]


class Decided(msgspec.Struct, frozen=True):
    """One decision in a timeline: a material publish (heartbeats are not decisions) or a
    retraction."""

    at: float
    event: str  # "publish" | "retract"
    action: str  # harvest_action, or "RETRACT"
    plan_id: str
    new_sl: str
    R_net: float
    kill_score: float
    reason: str


def _decided(out: Output) -> Decided | None:
    if isinstance(out, PublishOut):
        if out.trigger == "heartbeat":
            return None
        d = out.decision
        return Decided(
            out.at,
            "publish",
            d.harvest_action,
            out.plan_id,
            out.fields["new_sl_proposed"],
            d.R_net,
            d.kill_score,
            out.fields["reason_codes"],
        )
    return Decided(out.at, "retract", "RETRACT", "", "", math.nan, math.nan, out.reason)


class SymbolComparison(msgspec.Struct):
    symbol: str
    decisions: tuple[int, int]
    actions: dict[str, tuple[int, int]]
    only_a: list[str]
    only_b: list[str]
    first_divergence: dict[str, Any] | None

    @property
    def differs(self) -> bool:
        return self.first_divergence is not None


def _same(a: Decided, b: Decided) -> bool:
    return a.event == b.event and a.action == b.action and a.new_sl == b.new_sl


def _describe_decision(d: Decided | None) -> str:
    if d is None:
        return "(nothing)"
    if d.event == "retract":
        return f"retract ({d.reason})"
    sl = "" if d.new_sl == "None" else f" SL->{d.new_sl}"
    return f"{d.action}{sl} R={d.R_net:.3f} K={d.kill_score:.4f}"


def _timeline(
    path: str | os.PathLike[str], config: EngineConfig, reconcile_every: float | None
) -> tuple[dict[str, list[Decided]], ReplayStats]:
    """One replay's decisions per symbol, in order."""
    per_symbol: dict[str, list[Decided]] = {}

    def collect(outputs: list[Output]) -> None:
        for out in outputs:
            d = _decided(out)
            if d is not None:
                per_symbol.setdefault(out.symbol, []).append(d)

    stats = replay(path, config, collect, reconcile_every=reconcile_every)
    return per_symbol, stats


def _first_divergence(a: list[Decided], b: list[Decided], start: float) -> dict[str, Any] | None:
    """The first position where the two decision sequences differ (one ending early
    counts), or None when they agree throughout."""
    for i in range(max(len(a), len(b))):
        da = a[i] if i < len(a) else None
        db = b[i] if i < len(b) else None
        if da is None or db is None or not _same(da, db):
            at = min(x.at for x in (da, db) if x is not None)
            return {
                "index": i,
                "at": at,
                "offset_sec": at - start,
                "a": _describe_decision(da),
                "b": _describe_decision(db),
            }
    return None


def _compare_symbol(
    symbol: str, a: list[Decided], b: list[Decided], start: float
) -> SymbolComparison:
    names = sorted({d.action for d in a} | {d.action for d in b}, key=_action_order)
    actions = {
        name: (
            sum(1 for d in a if d.action == name),
            sum(1 for d in b if d.action == name),
        )
        for name in names
    }
    return SymbolComparison(
        symbol=symbol,
        decisions=(len(a), len(b)),
        actions=actions,
        only_a=[n for n, (ca, cb) in actions.items() if ca and not cb],
        only_b=[n for n, (ca, cb) in actions.items() if cb and not ca],
        first_divergence=_first_divergence(a, b, start),
    )


def compare(
    path: str | os.PathLike[str],
    config_a: EngineConfig,
    config_b: EngineConfig,
    *,
    reconcile_every: float | None = None,
) -> tuple[list[SymbolComparison], ReplayStats]:
    """Replay twice (A: current tunables, B: the other file's) and compare per symbol."""
    a_all, _ = _timeline(path, config_a, reconcile_every)
    # B's stats are returned; callers use the recording's span, the same in both
    b_all, stats = _timeline(path, config_b, reconcile_every)
    result = [
        _compare_symbol(symbol, a_all.get(symbol, []), b_all.get(symbol, []), stats.start)
        for symbol in sorted(set(a_all) | set(b_all))
    ]
    return result, stats


_ORDER = ("NONE", "PARTIAL_25", "PARTIAL_50", "PARTIAL_75", "FULL_CLOSE_PROPOSED", "RETRACT")


def _action_order(name: str) -> int:
    return _ORDER.index(name) if name in _ORDER else len(_ORDER)


def format_comparison(
    rows: Sequence[SymbolComparison], label_a: str, label_b: str, stats: ReplayStats
) -> str:
    """A per-symbol text summary for people tuning the tunables."""
    out = [
        f"A = {label_a}",
        f"B = {label_b}",
        f"decisions = material publishes and retractions (heartbeats excluded); "
        f"{stats.end - stats.start:.1f} s of recording",
        "",
    ]
    differ = 0
    for row in rows:
        status = "differs" if row.differs else "same"
        differ += row.differs
        out.append(f"{row.symbol}: {status}; decisions A {row.decisions[0]} / B {row.decisions[1]}")
        counts = "  ".join(f"{name} {ca}/{cb}" for name, (ca, cb) in row.actions.items())
        out.append(f"  actions A/B: {counts}")
        if row.only_a:
            out.append(f"  only A proposed: {', '.join(row.only_a)}")
        if row.only_b:
            out.append(f"  only B proposed: {', '.join(row.only_b)}")
        div = row.first_divergence
        if div is not None:
            out.append(
                f"  first divergence at +{div['offset_sec']:.3f} s ({iso_utc_ms(div['at'])}), "
                f"decision #{div['index'] + 1}:"
            )
            out.append(f"    A: {div['a']}")
            out.append(f"    B: {div['b']}")
    out.append("")
    out.append(f"{differ} of {len(rows)} symbols decide differently")
    return "\n".join(out) + "\n"
