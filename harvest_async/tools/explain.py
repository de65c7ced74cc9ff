"""`harvest-async explain SYMBOL`: what the service would do with a symbol now, and why.

Built from the service's public pieces, so it cannot disagree with them: the input
hashes read by the service's own reader, `evaluate` (validation, staleness), the
kernel, and `gate.decide` against the proposal hash in Redis (what the running service
last wrote). What it cannot see is the running engine's memory: a publish that was
retracted since still holds the floor (read from the audit stream when it is there),
and a retraction the service has not written yet.

`explain` is pure (a Snapshot and a time in, an Explanation out); `read_snapshot` is
the Redis side.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from harvest_async.config import Settings
from harvest_async.core import gate
from harvest_async.core.input_hashes import NoAdvice, Ready, SymbolInputs
from harvest_async.core.inputs import evaluate
from harvest_async.core.kernel import KernelInputError, compute
from harvest_async.core.models import Decision, KComponents, Theta
from harvest_async.core.proposal import theta_id_for
from harvest_async.core.timefmt import age_text, clock_utc, iso_utc_ms
from harvest_async.errors import RedisUnavailable
from harvest_async.redis_io.client import REDIS_ERRORS, Client, endpoint_for
from harvest_async.redis_io.liveness import Publisher, read_publishers
from harvest_async.redis_io.reader import RedisInputReader

__all__ = ["Explanation", "Snapshot", "explain", "read_snapshot", "render_text"]

STREAM_LOOKBACK = 2000  # audit entries searched for the symbol's last publish/retract


class Snapshot(msgspec.Struct, frozen=True):
    """What Redis holds for one symbol (as read at one moment)."""

    inputs: SymbolInputs
    proposal: dict[str, str] | None  # the proposal hash (None: no hash)
    publishers: list[Publisher]
    last_publish_at: float | None = None  # from the audit stream, when the hash is gone
    last_retract: tuple[float, str] | None = None  # (at, reason) from the audit stream


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


# -- reading -------------------------------------------------------------------------------
async def read_snapshot(client: Client, settings: Settings, symbol: str) -> Snapshot:
    keys = settings.keys
    reader = RedisInputReader(
        client, keys, endpoint_for(settings), timeout=settings.redis_timeout_sec
    )
    try:
        (inputs,) = await reader.fetch([symbol])
    finally:
        reader.close()
    try:
        async with client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.proposal(symbol))
            pipe.xrevrange(keys.stream, count=STREAM_LOOKBACK)
            proposal, entries = await pipe.execute(raise_on_error=False)
    except REDIS_ERRORS as exc:
        raise RedisUnavailable(f"explain: reading the proposal of {symbol}: {exc}") from exc
    if not isinstance(proposal, dict):
        proposal = {}  # another type under the key (WRONGTYPE): the service replaces it
    if not isinstance(entries, list):
        entries = []  # no audit stream (or not a stream)
    last_publish_at = last_retract = None
    for _id, fields in entries:
        if fields.get("symbol") != symbol:
            continue
        if fields.get("event") == "retract" and last_retract is None:
            last_retract = (_float(fields.get("ts_epoch")) or 0.0, fields.get("reason", ""))
        elif fields.get("event") == "publish" and last_publish_at is None:
            last_publish_at = _float(fields.get("ts_epoch"))
        if last_publish_at is not None and last_retract is not None:
            break
    return Snapshot(
        inputs,
        proposal or None,
        await read_publishers(client, keys),
        last_publish_at,
        last_retract,
    )


def _float(raw: str | None) -> float | None:
    try:
        value = float(raw) if raw else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


# -- deciding ------------------------------------------------------------------------------
def _gate_config(settings: Settings) -> gate.GateConfig:
    return gate.GateConfig(
        floor_sec=settings.publish_interval_sec,
        heartbeat_sec=settings.max_publish_age_sec,
        change_eps=settings.change_eps_pct,
        r_eps=settings.r_eps,
    )


def _published_decision(fields: dict[str, str]) -> Decision | None:
    """The decision a proposal hash states (as the engine reads one it adopts)."""
    try:
        sl = fields["new_sl_proposed"]
        return Decision(
            harvest_action=fields["harvest_action"],  # type: ignore[arg-type]
            new_sl_proposed=None if sl == "None" else float(sl),
            R_net=float(fields["R_net"]),
            risk_unit=0.0,
            cost_est=0.0,
            kill_score=float(fields["kill_score"]),
            reason_codes=(),
            k_components=KComponents(0.0, 0.0, 0.0, 0.0),
            tranche_weights=(0.0, 0.0, 0.0),
        )
    except (KeyError, ValueError):
        return None


def material_changes(prev: Decision, new: Decision, cfg: gate.GateConfig) -> list[str]:
    """Each criterion of `gate.is_material` that holds, in words."""
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


def _unchanged(prev: Decision, new: Decision, cfg: gate.GateConfig) -> str:
    return (
        f"same action {new.harvest_action}, same new SL, kill score moved "
        f"{abs(new.kill_score - prev.kill_score):.4f} (<= {cfg.change_eps:g}), R_net moved "
        f"{abs(new.R_net - prev.R_net):.3f} (<= R_EPS {cfg.r_eps:g})"
    )


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
        stamp = _float((fields or {}).get(name))
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
    at = _float(fields.get("ts_epoch"))
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
    cfg = _gate_config(settings)
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


def _publish_rules(
    ready: Ready, decision: Decision, snap: Snapshot, cfg: gate.GateConfig, now: float
) -> Verdict:
    stale = (ready.stale_at, "an input becomes too old: the proposal is retracted")
    fields = snap.proposal
    previous = None if not fields else _published_decision(fields)
    if fields and previous is None:
        return Verdict(
            "publish",
            "foreign hash",
            "the proposal hash is not in this service's format: it is replaced now",
        )
    last_at = _float(fields.get("ts_epoch")) if fields else snap.last_publish_at
    if previous is None and last_at is not None and now < last_at + cfg.floor_sec:
        # retracted since its last publish: the floor still holds the next one back
        at = last_at + cfg.floor_sec
        return Verdict(
            "wait",
            "floor",
            f"no proposal in Redis; the last publish was {age_text(now - last_at)} ago, inside "
            f"the floor (PUBLISH_INTERVAL_SEC {cfg.floor_sec:g}): publishes "
            f"{decision.harvest_action} at {clock_utc(at)} UTC with the latest state",
            *_later((at, "the floor window ends: publishes"), stale),
        )
    if previous is None:
        return Verdict(
            "publish",
            "no proposal",
            f"no proposal in Redis: publishes {decision.harvest_action} now",
            *_later(stale),
        )
    assert last_at is not None or fields is not None
    at = last_at if last_at is not None else now
    rule = gate.decide(previous, at, decision, now, cfg)
    changes = material_changes(previous, decision, cfg)
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
        f"the proposal published {ago} ago still holds ({_unchanged(previous, decision, cfg)})",
        *_later((rule.next_check, "heartbeat: re-published with the same plan_id"), stale),
    )


# -- text ----------------------------------------------------------------------------------
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
    value = _float(raw if isinstance(raw, str) else None)
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
