"""The reference parsers of the input hashes: field by field, naming each problem.

`parse_fast` handles clean hashes in one msgspec call and hands everything else here; the
two agree bit for bit (a hypothesis test checks it). Pure.
"""

from __future__ import annotations

import math

from harvest_async.core.input_hashes import (
    SIDES,
    Hash,
    InputProblem,
    NoAdvice,
    ParsedPosition,
    parse_epoch,
)
from harvest_async.core.models import MarketState, Position, RiskProposal

__all__ = ["market", "number", "position", "risk"]


def _text(fields: Hash, name: str) -> str | None:
    raw = fields.get(name)
    if raw is None:
        return None
    raw = raw.strip()
    if raw == "" or raw in ("None", "null", "NULL", "none"):
        return None
    return raw


def number(fields: Hash, name: str, *, required: bool) -> float | None:
    # Fast path for the common case, a plain number: float() ignores the same
    # surrounding whitespace that strip() removes, and everything it refuses (absent,
    # empty, "None", text) takes the checks below, as does a non-finite value.
    raw = fields.get(name)
    if raw is not None:
        try:
            value = float(raw)
        except ValueError:
            pass
        else:
            if math.isfinite(value):
                return value
    raw = _text(fields, name)
    if raw is None:
        if required:
            raise InputProblem(name, "is missing")
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InputProblem(name, f"is not a number ({raw[:40]!r})") from None
    if not math.isfinite(value):
        raise InputProblem(name, f"is not finite ({raw[:40]!r})")
    return value


def _lenient(fields: Hash, name: str) -> float | None:
    """Fields that influence no output: a bad value is dropped, not fatal."""
    try:
        return number(fields, name, required=False)
    except InputProblem:
        return None


def market(fields: Hash) -> MarketState:
    sigma = number(fields, "sigma", required=True)
    ts = number(fields, "ts", required=True)
    probs = [number(fields, name, required=True) for name in ("p_trend", "p_mr", "p_chop")]
    assert sigma is not None and ts is not None
    if sigma < 0.0:
        raise InputProblem("sigma", f"is negative ({sigma!r})")
    # Trend strength is a magnitude (the producer writes |mu| / (sigma + eps), never < 0).
    # The locked kernel caps a negative one into a larger ts_drop (spec formula
    # ts_drop = clamp(ts_ref - ts, 0, ts_drop_cap), vector edge::ts_negative_cap), which
    # pushes the kill score towards a full close: the service refuses it instead, the
    # kernel keeps the spec (docs/kernel.md "Inputs", docs/inputs.md "Market state").
    # No upper bound: any ts >= ts_ref contributes nothing to the kill score.
    if ts < 0.0:
        raise InputProblem("ts", f"is negative ({ts!r})")
    for name, value in zip(("p_trend", "p_mr", "p_chop"), probs, strict=True):
        assert value is not None
        if not 0.0 <= value <= 1.0:
            raise InputProblem(name, f"is outside [0, 1] ({value!r})")
    return MarketState(sigma, ts, probs[0], probs[1], probs[2])  # type: ignore[arg-type]


def _age_info(fields: Hash) -> tuple[float | None, float | None]:
    """(age_sec, created_at epoch): age is `age_sec` if given, else now - created_at."""
    age = number(fields, "age_sec", required=False)
    if age is not None:
        return age, None
    raw = _text(fields, "created_at")
    if raw is None:
        return None, None
    return None, parse_epoch(raw)


def position(fields: Hash, symbol: str, needs_quantity: bool) -> ParsedPosition | NoAdvice:
    raw_side = _text(fields, "side")
    if raw_side is None:
        raise InputProblem("side", "is missing")
    side = SIDES.get(raw_side.upper())
    if side is None:
        raise InputProblem("side", f"is not LONG, SHORT or FLAT ({raw_side[:20]!r})")
    if side == "FLAT":
        return NoAdvice("flat", "position side is FLAT")
    quantity = number(fields, "quantity", required=False)
    if quantity is None:
        quantity = number(fields, "position_amt", required=False)
    if quantity is not None and quantity == 0.0:
        return NoAdvice("zero_quantity", "position quantity is 0")
    entry = number(fields, "entry_price", required=True)
    assert entry is not None
    if entry <= 0.0:
        raise InputProblem("entry_price", f"must be > 0 ({entry!r})")
    pnl = number(fields, "unrealized_pnl", required=True)
    assert pnl is not None
    current_sl = number(fields, "current_sl", required=False)
    if current_sl is None:
        current_sl = number(fields, "stop_loss", required=False)
    entry_risk = number(fields, "entry_risk_usdt", required=False)
    if entry_risk is not None and entry_risk <= 0.0:
        raise InputProblem("entry_risk_usdt", f"must be > 0 when given ({entry_risk!r})")
    if needs_quantity and quantity is None and entry_risk is None:
        raise InputProblem("quantity", "is missing (needed for r_basis=position)")
    price = _lenient(fields, "current_price")
    if price is None:
        price = _lenient(fields, "mark_price")
    current_tp = _lenient(fields, "current_tp")
    if current_tp is None:
        current_tp = _lenient(fields, "take_profit")
    age_sec, created_at = _age_info(fields)
    return ParsedPosition(
        Position(
            symbol=symbol,
            side=side,
            entry_price=entry,
            unrealized_pnl=pnl,
            age_sec=0.0,  # set at evaluation time: an age from created_at advances
            current_price=price,
            peak_price=_lenient(fields, "peak_price"),
            trough_price=_lenient(fields, "trough_price"),
            current_sl=current_sl,
            current_tp=current_tp,
            quantity=1.0 if quantity is None else quantity,
            entry_risk_usdt=entry_risk,
        ),
        age_sec,
        created_at,
        number(fields, "ts_epoch", required=False),
    )


def risk(fields: Hash | None) -> RiskProposal | None:
    if fields is None:
        return None
    stop = number(fields, "stop_dist_pct", required=False)
    # The locked kernel floors a negative stop's risk unit at 1e-9 (spec vector
    # edge::p1_stop_negative_clamped_1e-9), which makes R_net enormous and proposes the
    # largest partial exit: the service refuses it as corrupt input instead (docs/inputs.md).
    if stop is not None and stop < 0.0:
        raise InputProblem("stop_dist_pct", f"is negative ({stop!r})")
    return RiskProposal(
        stop_dist_pct=stop,
        proposed_sl=_lenient(fields, "proposed_sl"),
        proposed_tp=_lenient(fields, "proposed_tp"),
    )
