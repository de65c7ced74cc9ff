"""The proposal hash (docs/outputs.md): its fields, `plan_id` and `theta_id`. Pure."""

from __future__ import annotations

import functools
import hashlib

import msgspec

from harvest_async.core.input_hashes import Hash, Ready
from harvest_async.core.models import Decision, KComponents, Theta
from harvest_async.core.timefmt import iso_utc

__all__ = [
    "PROPOSAL_FIELDS",
    "SCHEMA_VERSION",
    "plan_id_for",
    "proposal_fields",
    "published_decision",
    "theta_id_for",
]

SCHEMA_VERSION = "2"


def theta_id_for(theta: Theta) -> str:
    return hashlib.blake2b(msgspec.json.encode(theta), digest_size=4).hexdigest()


def plan_id_for(symbol: str, decision: Decision, theta_id: str, k_quantum: float = 0.001) -> str:
    """Identifies a decision: action, proposed SL and kill score (on a `k_quantum` grid).

    K drifts continuously with position age (~3.5e-6 per second with the defaults), so
    hashing its exact repr would give a new id on every recompute, and a replay computed
    a millisecond later than live would disagree. On the CHANGE_EPS grid, a K move that
    is material changes the id; clock jitter almost never does.
    """
    k = decision.kill_score
    k_key = repr(round(k / k_quantum)) if k_quantum > 0 else repr(k)
    text = f"{symbol}|{decision.harvest_action}|{decision.new_sl_proposed!r}|{k_key}|{theta_id}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@functools.lru_cache(maxsize=4)
def _time_texts(now: float, ttl: float) -> tuple[str, str, str, str]:
    """computed_at_utc, last_update_epoch, ts_epoch, valid_until at `now`: the same for
    every proposal of a round (one `now` each), so formatted once per round."""
    at = round(now, 6)
    valid_until = repr(round(at + ttl, 6)) if ttl > 0 else ""
    return iso_utc(now), str(int(now)), repr(at), valid_until


def proposal_fields(
    symbol: str,
    ready: Ready,
    decision: Decision,
    *,
    now: float,
    plan_id: str,
    seq: int,
    trigger: str,
    theta_id: str,
    ttl: float = 0.0,
) -> Hash:
    """The proposal hash (docs/outputs.md): original names and formats plus ours.

    `ttl` (PROPOSAL_TTL_SEC) makes `valid_until` = `ts_epoch` + ttl (empty when 0): the
    moment the hash expires unless a publish refreshes it (INTERFACE §2.5)."""
    k = decision.k_components
    pos = ready.position
    mkt = ready.market
    computed_at, last_update, ts_epoch, valid_until = _time_texts(now, ttl)
    price = pos.current_price
    market_age = ready.marketstate_age_sec
    snapshot_age = ready.position_snapshot_age_sec
    return {
        "harvest_action": decision.harvest_action,
        "new_sl_proposed": repr(decision.new_sl_proposed),
        "R_net": repr(decision.R_net),
        "risk_unit": repr(decision.risk_unit),
        "cost_est": repr(decision.cost_est),
        "kill_score": repr(decision.kill_score),
        "reason_codes": ",".join(decision.reason_codes),
        "k_regime_flip": repr(k.regime_flip),
        "k_sigma_spike": repr(k.sigma_spike),
        "k_ts_drop": repr(k.ts_drop),
        "k_age_penalty": repr(k.age_penalty),
        "sigma": repr(mkt.sigma),
        "ts": repr(mkt.ts),
        "p_trend": repr(mkt.p_trend),
        "p_mr": repr(mkt.p_mr),
        "p_chop": repr(mkt.p_chop),
        "computed_at_utc": computed_at,
        "last_update_epoch": last_update,
        "position_side": pos.side,
        "position_age_sec": repr(pos.age_sec),
        "position_current_price": "" if price is None else repr(price),
        "position_entry_price": repr(pos.entry_price),
        "position_unrealized_pnl": repr(pos.unrealized_pnl),
        "symbol": symbol,
        "plan_id": plan_id,
        "ts_epoch": ts_epoch,
        "trigger": trigger,
        "seq": str(seq),
        "position_source": ready.position_source,
        "risk_source": ready.risk_source,
        "marketstate_age_sec": "" if market_age is None else repr(round(market_age, 3)),
        "position_snapshot_age_sec": "" if snapshot_age is None else repr(round(snapshot_age, 3)),
        "theta_id": theta_id,
        "schema_version": SCHEMA_VERSION,
        "valid_until": valid_until,
    }


PROPOSAL_FIELDS: tuple[str, ...] = (
    "harvest_action", "new_sl_proposed", "R_net", "risk_unit", "cost_est", "kill_score",
    "reason_codes", "k_regime_flip", "k_sigma_spike", "k_ts_drop", "k_age_penalty", "sigma",
    "ts", "p_trend", "p_mr", "p_chop", "computed_at_utc", "last_update_epoch", "position_side",
    "position_age_sec", "position_current_price", "position_entry_price",
    "position_unrealized_pnl", "symbol", "plan_id", "ts_epoch", "trigger", "seq",
    "position_source", "risk_source", "marketstate_age_sec", "position_snapshot_age_sec",
    "theta_id", "schema_version", "valid_until",
)  # fmt: skip


def published_decision(fields: Hash) -> tuple[Decision, str, float] | None:
    """(decision, plan_id, ts_epoch) of a proposal hash as read back, with what a publish
    rule compares (action, SL, R_net, K); None when the hash is not in our format."""
    try:
        sl = fields["new_sl_proposed"]
        decision = Decision(
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
        return decision, fields["plan_id"], float(fields["ts_epoch"])
    except (KeyError, ValueError):
        return None
