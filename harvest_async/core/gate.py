"""Publish rules, pure: last published decision + new decision + now -> verdict.

The rules as users see them: docs/publish-rules.md. No clock, no I/O: the caller passes
`now` and acts on the verdict.
"""

from __future__ import annotations

import math

import msgspec

from harvest_async.core.models import Decision
from harvest_async.core.timefmt import iso_utc

__all__ = [
    "Defer",
    "GateConfig",
    "Publish",
    "Skip",
    "decide",
    "held_text",
    "is_material",
    "material_changes",
    "unchanged_text",
]


class GateConfig(msgspec.Struct, frozen=True):
    floor_sec: float = 10.0  # PUBLISH_INTERVAL_SEC
    heartbeat_sec: float = 60.0  # MAX_PUBLISH_AGE_SEC
    change_eps: float = 0.001  # CHANGE_EPS_PCT: SL relative, K absolute
    r_eps: float = 0.05  # R_EPS: R_net absolute


class Publish(msgspec.Struct, frozen=True):
    trigger: str  # "change" | "heartbeat" (the engine turns a first publish into "startup")
    material: bool  # False: a heartbeat re-publish of the same decision (keeps its plan_id)


class Defer(msgspec.Struct, frozen=True):
    until: float  # the floor window's end: re-evaluate then with the latest state


class Skip(msgspec.Struct, frozen=True):
    next_check: float  # the heartbeat: re-evaluate then


Verdict = Publish | Defer | Skip


def is_material(prev: Decision, new: Decision, cfg: GateConfig) -> bool:
    """A change worth publishing: action, SL appears/disappears/moves, K or R_net moves."""
    if prev.harvest_action != new.harvest_action:
        return True
    a, b = prev.new_sl_proposed, new.new_sl_proposed
    if (a is None) != (b is None):
        return True
    if a is not None and b is not None:
        scale = abs(a)
        if scale == 0.0:
            if b != 0.0:
                return True
        elif abs(b - a) / scale > cfg.change_eps:
            return True
    if abs(new.kill_score - prev.kill_score) > cfg.change_eps:
        return True
    return abs(new.R_net - prev.R_net) > cfg.r_eps


def decide(
    last: Decision | None,
    last_publish_at: float | None,
    new: Decision,
    now: float,
    cfg: GateConfig,
) -> Publish | Defer | Skip:
    """What to do with `new` given what is currently published.

    `last` is the decision in the proposal hash now (None: no hash), `last_publish_at` the
    time of this symbol's last publish (kept across retractions: the floor still applies).
    """
    # Compare with the same sums that are handed back as deadlines, so a timer firing
    # exactly at its deadline always passes (now - last >= floor can round the other way).
    material = last is None or is_material(last, new, cfg)
    if material:
        if last_publish_at is None:
            return Publish("change", True)
        window_end = last_publish_at + cfg.floor_sec
        if now >= window_end:
            return Publish("change", True)
        return Defer(window_end)
    assert last_publish_at is not None  # a published decision has a publish time
    heartbeat_at = last_publish_at + cfg.heartbeat_sec
    if now >= heartbeat_at:
        return Publish("heartbeat", False)
    return Skip(heartbeat_at)


# -- the same rules in words (logs at DEBUG, `explain`) ---------------------------------------
def material_changes(prev: Decision, new: Decision, cfg: GateConfig) -> list[str]:
    """Each criterion of `is_material` that holds, in words."""
    out = []
    if prev.harvest_action != new.harvest_action:
        out.append(f"action {prev.harvest_action} -> {new.harvest_action}")
    a, b = prev.new_sl_proposed, new.new_sl_proposed
    if (a is None) != (b is None):
        out.append(f"new SL {a!r} -> {b!r}")
    elif a is not None and b is not None and a != b:
        moved = abs(b - a) / abs(a) if a else math.inf
        if moved > cfg.change_eps:
            out.append(f"new SL {a:.8g} -> {b:.8g} (moved {moved:.3%} > {cfg.change_eps:g})")
    dk = abs(new.kill_score - prev.kill_score)
    if dk > cfg.change_eps:
        out.append(
            f"kill score {prev.kill_score:.4f} -> {new.kill_score:.4f} (> {cfg.change_eps:g})"
        )
    dr = abs(new.R_net - prev.R_net)
    if dr > cfg.r_eps:
        out.append(f"R_net {prev.R_net:.3f} -> {new.R_net:.3f} (> R_EPS {cfg.r_eps:g})")
    return out


def unchanged_text(prev: Decision, new: Decision, cfg: GateConfig) -> str:
    """Why `new` is not material against `prev`: each criterion within its threshold."""
    return (
        f"same action {new.harvest_action}, same new SL, kill score moved "
        f"{abs(new.kill_score - prev.kill_score):.4f} (<= {cfg.change_eps:g}), R_net moved "
        f"{abs(new.R_net - prev.R_net):.3f} (<= R_EPS {cfg.r_eps:g})"
    )


def held_text(last: Decision | None, new: Decision, verdict: Defer | Skip, cfg: GateConfig) -> str:
    """Why `new` is not published now (a DEBUG line): until when, and which thresholds."""
    if isinstance(verdict, Defer):
        changes = "; ".join(material_changes(last, new, cfg)) if last else "nothing published"
        return f"deferred until {iso_utc(verdict.until)} (floor {cfg.floor_sec:g} s): {changes}"
    assert last is not None  # only a published decision can be immaterial
    return (
        f"not published, immaterial ({unchanged_text(last, new, cfg)}); heartbeat at "
        f"{iso_utc(verdict.next_check)}"
    )
