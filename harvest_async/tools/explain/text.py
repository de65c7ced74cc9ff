"""An Explanation as people read it (`harvest-async explain` without `--json`)."""

from __future__ import annotations

from typing import Any

from harvest_async.core.timefmt import age_text, clock_utc, iso_utc_ms
from harvest_async.tools.explain.decide import Explanation
from harvest_async.tools.explain.snapshot import finite

__all__ = ["render_text"]


def _in(at: float, now: float) -> str:
    return f"{clock_utc(at)} UTC (in {age_text(max(0.0, at - now))})"


def _input_line(kind: str, info: dict[str, Any] | None, age_field: str) -> str:
    if info is None:
        return f"{kind}: (no key)"
    age = info.get(age_field)
    fields = ", ".join(f"{k}={v}" for k, v in sorted(info["fields"].items()))
    when = "" if age is None else f" [{age_text(age)} old]" if age >= 0 else " [ahead of the clock]"
    return f"{kind}{when}: {fields}"


def _num(raw: Any, fmt: str) -> str:
    value = finite(raw if isinstance(raw, str) else None)
    return "?" if value is None else format(value, fmt)


def render_text(e: Explanation) -> str:
    v = e.verdict
    lines = [f"{e.symbol} at {iso_utc_ms(e.now)}", f"decision: {v.action.upper()} ({v.rule})"]
    lines.append(f"  why: {v.detail}")
    if v.next_deadline is not None:
        lines.append(f"  next deadline: {_in(v.next_deadline, e.now)}: {v.next_event}")
    else:
        lines.append("  next deadline: none (only new input changes this)")
    lines.append("inputs:")
    lines.append("  " + _input_line("market state", e.inputs["marketstate"], "age_sec"))
    lines.append("  " + _input_line("risk proposal", e.inputs["risk"], ""))
    lines.append("  " + _input_line("position", e.inputs["position"], "snapshot_age_sec"))
    if e.kernel:
        lines.append("kernel:")
        lines.extend(f"  {line}" for line in e.kernel)
    p = e.published
    if p is None:
        lines.append("published: no proposal in Redis")
    else:
        age = p.get("age_sec")
        lines.append(
            f"published: {p.get('harvest_action')} R_net {_num(p.get('R_net'), '.3f')} kill "
            f"{_num(p.get('kill_score'), '.4f')} new SL {p.get('new_sl_proposed')} (trigger "
            f"{p.get('trigger')}, plan {p.get('plan_id')}, seq {p.get('seq')}"
            + ("" if age is None else f", {age_text(max(0.0, age))} ago")
            + (f", valid until {p['valid_until']}" if "valid_until" in p else "")
            + ")"
        )
    if e.publishers:
        alive = []
        for pub in e.publishers:
            beat = pub["beat_age_sec"]
            alive.append(
                f"{pub['instance']} (pid {pub['pid']} on {pub['host']}"
                + ("" if beat is None else f", beat {age_text(beat)} ago")
                + ")"
            )
        lines.append(f"publishers: {', '.join(alive)}")
    else:
        lines.append("publishers: none alive")
    lines.extend(f"note: {note}" for note in e.notes)
    return "\n".join(lines)
