"""The verdict, pure: what the engine's own pieces (validation, kernel, gate) decide for a
Snapshot at a time, with the rule that decides it and the next deadline."""

from __future__ import annotations

from typing import Any

import msgspec

from harvest_async.config import Settings, engine_config
from harvest_async.core import gate
from harvest_async.core.input_hashes import NoAdvice, Ready, SymbolInputs
from harvest_async.core.inputs import evaluate
from harvest_async.core.kernel import KernelInputError, compute
from harvest_async.core.models import Decision, Theta
from harvest_async.core.proposal import published_decision, theta_id_for
from harvest_async.core.timefmt import age_text, clock_utc
from harvest_async.tools.explain.snapshot import Snapshot, finite

__all__ = ["Explanation", "Verdict", "explain", "kernel_reasons"]


class Verdict(msgspec.Struct, frozen=True):
    action: str  # publish | wait | nothing | retract | no advice | not followed
    rule: str  # the rule that decides: "material change", "floor", "heartbeat", a reason...
    detail: str
    next_deadline: float | None = None  # when the service looks at it again by itself
    next_event: str | None = None  # what happens then


class Explanation(msgspec.Struct, frozen=True):
    symbol: str
    now: float
    verdict: Verdict
    inputs: dict[str, Any]
    kernel: list[str]  # why the kernel decided as it did (empty without usable inputs)
    decision: Decision | None
    published: dict[str, Any] | None
    publishers: list[dict[str, Any]]
    notes: list[str]


def kernel_reasons(ready: Ready, d: Decision, theta: Theta) -> list[str]:
    """Why the kernel decided `d`: the R multiple, the ladder, the profit lock, the kill."""
    pos = ready.position
    if ready.risk_source == "p1":
        assert ready.risk is not None
        stop = f"stop_dist_pct {ready.risk.stop_dist_pct:g} (risk proposal)"
    else:
        stop = f"FALLBACK_STOP_PCT {theta.fallback_stop_pct:g} (no stop in the risk proposal)"
    r = d.R_net
    lines = [
        f"R_net = (unrealized_pnl {pos.unrealized_pnl:g} - cost {d.cost_est:.6g}) / risk unit "
        f"{d.risk_unit:.6g} = {r:.4f}   [risk unit = entry {pos.entry_price:g} x {stop}"
        + (", whole position (r_basis=position)" if theta.r_basis == "position" else "")
        + "]"
    ]
    if r >= theta.T3_R:
        ladder = f"R_net >= T3_R {theta.T3_R:g} -> PARTIAL_75"
    elif r >= theta.T2_R:
        ladder = f"T2_R {theta.T2_R:g} <= R_net < T3_R {theta.T3_R:g} -> PARTIAL_50"
    elif r >= theta.T1_R:
        ladder = f"T1_R {theta.T1_R:g} <= R_net < T2_R {theta.T2_R:g} -> PARTIAL_25"
    else:
        ladder = f"R_net < T1_R {theta.T1_R:g} -> no partial exit"
    lines.append(f"ladder: {ladder}")
    if r < theta.lock_R:
        lines.append(f"profit lock: R_net < lock_R {theta.lock_R:g} -> no stop move")
    elif d.new_sl_proposed is not None:
        lines.append(
            f"profit lock: R_net >= lock_R {theta.lock_R:g} -> move the stop to "
            f"{d.new_sl_proposed:.8g} (break-even {theta.be_plus_pct:+.2%} beyond entry)"
        )
    else:
        lines.append(
            f"profit lock: R_net >= lock_R {theta.lock_R:g}, but the current stop "
            f"{pos.current_sl!r} is already at or beyond break-even -> no stop move"
        )
    k = d.k_components
    weighted = (
        f"{theta.k_regime_flip:g} x regime_flip {k.regime_flip:g} + {theta.k_sigma_spike:g} x "
        f"sigma_spike {k.sigma_spike:.4g} + {theta.k_ts_drop:g} x ts_drop {k.ts_drop:.4g} + "
        f"{theta.k_age_penalty:g} x age_penalty {k.age_penalty:.4g}"
    )
    if d.kill_score >= theta.kill_threshold:
        verdict = f">= kill_threshold {theta.kill_threshold:g} -> FULL_CLOSE_PROPOSED"
        if r >= theta.T1_R:
            verdict += " (overrides the ladder)"
    else:
        verdict = f"< kill_threshold {theta.kill_threshold:g} -> no full close"
    lines.append(f"kill score {d.kill_score:.4f} = sigmoid({weighted}) {verdict}")
    return lines


def _inputs_summary(inputs: SymbolInputs, ready: Ready | None, now: float) -> dict[str, Any]:
    def age(fields: dict[str, str] | None, name: str) -> float | None:
        stamp = finite((fields or {}).get(name))
        return None if stamp is None else now - stamp

    out: dict[str, Any] = {
        "marketstate": None
        if inputs.marketstate is None
        else {"fields": inputs.marketstate, "age_sec": age(inputs.marketstate, "ts_timestamp")},
        "risk": None if inputs.risk is None else {"fields": inputs.risk},
        "position": None
        if inputs.position is None
        else {"fields": inputs.position, "snapshot_age_sec": age(inputs.position, "ts_epoch")},
    }
    if ready is not None:
        out["risk_source"] = ready.risk_source
        out["stale_at"] = ready.stale_at
    return out


def _published_summary(fields: dict[str, str] | None, now: float) -> dict[str, Any] | None:
    if not fields:
        return None
    at = finite(fields.get("ts_epoch"))
    keep = ("harvest_action", "new_sl_proposed", "R_net", "kill_score", "plan_id", "seq",
            "trigger", "theta_id", "valid_until")  # fmt: skip
    out: dict[str, Any] = {name: fields[name] for name in keep if name in fields}
    out["ts_epoch"] = at
    out["age_sec"] = None if at is None else now - at
    return out


def _later(*deadlines: tuple[float | None, str]) -> tuple[float | None, str | None]:
    known = [(at, what) for at, what in deadlines if at is not None]
    if not known:
        return None, None
    return min(known, key=lambda pair: pair[0])


def explain(settings: Settings, symbol: str, snap: Snapshot, now: float) -> Explanation:
    theta = settings.theta
    cfg = engine_config(settings).gate
    published = _published_summary(snap.proposal, now)
    publishers = [
        {"instance": p.instance, "host": p.host, "pid": p.pid, "beat_age_sec": p.beat_age(now)}
        for p in snap.publishers
    ]
    notes: list[str] = []
    if not snap.publishers:
        notes.append(
            "no live publisher (no liveness key): nothing is published or retracted until "
            "`harvest-async run` runs"
        )
    if snap.proposal and snap.proposal.get("theta_id") not in (None, theta_id_for(theta)):
        notes.append(
            f"the proposal was written with theta_id {snap.proposal.get('theta_id')}, these "
            f"settings give {theta_id_for(theta)}: compare the service's tunables "
            "(harvest-async config)"
        )

    def done(
        verdict: Verdict,
        ready: Ready | None = None,
        kernel: list[str] | None = None,
        decision: Decision | None = None,
    ) -> Explanation:
        inputs = _inputs_summary(snap.inputs, ready, now)
        return Explanation(
            symbol, now, verdict, inputs, kernel or [], decision, published, publishers, notes
        )

    if settings.symbols is not None and symbol not in settings.symbols:
        listed = f"SYMBOLS lists {len(settings.symbols)} symbols and not {symbol}"
        return done(Verdict("not followed", "SYMBOLS", f"{listed}: the service ignores it"))
    result = evaluate(
        snap.inputs,
        now,
        theta=theta,
        max_input_age_sec=settings.max_input_age_sec,
        max_clock_skew_sec=settings.max_clock_skew_sec,
        synthetic_positions=settings.position_source == "synthetic",
    )
    decision: Decision | None = None
    if isinstance(result, Ready):
        try:
            decision = compute(result.position, result.market, result.risk, theta)
        except KernelInputError as exc:
            result = NoAdvice("invalid_input", str(exc))
    if isinstance(result, NoAdvice):
        return done(_no_advice(result, snap, now))
    assert decision is not None
    reasons = kernel_reasons(result, decision, theta)
    return done(_publish_rules(result, decision, snap, cfg, now), result, reasons, decision)


def _no_advice(why: NoAdvice, snap: Snapshot, now: float) -> Verdict:
    until = "" if why.recheck_at is None else f" until {clock_utc(why.recheck_at)} UTC"
    if snap.proposal:
        detail = (
            f"no advice ({why.text()}){until}: the proposal is deleted and a retract entry "
            "written at once (retractions are never delayed by the floor)"
        )
        action = "retract"
    else:
        detail = f"no advice ({why.text()}){until}; there is no proposal to retract"
        action = "no advice"
    if why.recheck_at is not None:
        again = "the time stamp is within the clock-skew tolerance: evaluated again"
        return Verdict(action, why.reason, detail, why.recheck_at, again)
    return Verdict(action, why.reason, detail + "; this ends only with new input")


def _unpublished(
    decision: Decision,
    last_at: float | None,
    cfg: gate.GateConfig,
    now: float,
    stale: tuple[float | None, str],
) -> Verdict:
    """No proposal in Redis: published now, unless the floor of a publish since retracted
    still holds it back."""
    if last_at is None or now >= last_at + cfg.floor_sec:
        return Verdict(
            "publish",
            "no proposal",
            f"no proposal in Redis: publishes {decision.harvest_action} now",
            *_later(stale),
        )
    at = last_at + cfg.floor_sec
    return Verdict(
        "wait",
        "floor",
        f"no proposal in Redis; the last publish was {age_text(now - last_at)} ago, inside "
        f"the floor (PUBLISH_INTERVAL_SEC {cfg.floor_sec:g}): publishes "
        f"{decision.harvest_action} at {clock_utc(at)} UTC with the latest state",
        *_later((at, "the floor window ends: publishes"), stale),
    )


def _publish_rules(
    ready: Ready, decision: Decision, snap: Snapshot, cfg: gate.GateConfig, now: float
) -> Verdict:
    stale = (ready.stale_at, "an input becomes too old: the proposal is retracted")
    found = published_decision(snap.proposal) if snap.proposal else None
    if snap.proposal and found is None:
        return Verdict(
            "publish",
            "foreign hash",
            "the proposal hash is not in this service's format: it is replaced now",
        )
    if found is None:
        return _unpublished(decision, snap.last_publish_at, cfg, now, stale)
    previous, _plan_id, at = found
    rule = gate.decide(previous, at, decision, now, cfg)
    changes = gate.material_changes(previous, decision, cfg)
    ago = age_text(max(0.0, now - at))
    if isinstance(rule, gate.Publish) and rule.trigger == "heartbeat":
        return Verdict(
            "publish",
            "heartbeat",
            f"no material change, but the last publish was {ago} ago (MAX_PUBLISH_AGE_SEC "
            f"{cfg.heartbeat_sec:g}): re-published now with the same plan_id",
            *_later(stale),
        )
    if isinstance(rule, gate.Publish):
        return Verdict(
            "publish",
            "material change",
            f"material change since the proposal published {ago} ago ({'; '.join(changes)}): "
            "publishes now",
            *_later(stale),
        )
    if isinstance(rule, gate.Defer):
        return Verdict(
            "wait",
            "floor",
            f"material change ({'; '.join(changes)}) inside the floor: the last publish was "
            f"{ago} ago (PUBLISH_INTERVAL_SEC {cfg.floor_sec:g}); publishes at "
            f"{clock_utc(rule.until)} UTC with the latest state, if still material then",
            *_later((rule.until, "the floor window ends: publishes if still material"), stale),
        )
    assert isinstance(rule, gate.Skip)
    return Verdict(
        "nothing",
        "no material change",
        f"the proposal published {ago} ago still holds "
        f"({gate.unchanged_text(previous, decision, cfg)})",
        *_later((rule.next_check, "heartbeat: re-published with the same plan_id"), stale),
    )
