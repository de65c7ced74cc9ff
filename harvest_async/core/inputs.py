"""A symbol's input hashes, parsed once each and judged together at `now`: kernel inputs,
or the reason there is no advice (docs/inputs.md). Pure.
"""

from __future__ import annotations

import msgspec

from harvest_async.core import parse_fast, parse_reference
from harvest_async.core.input_hashes import (
    OVERSIZED,
    Hash,
    InputProblem,
    MarketPart,
    NoAdvice,
    ParsedMarket,
    ParsedPosition,
    PositionPart,
    Ready,
    RiskPart,
    SymbolInputs,
)
from harvest_async.core.models import Position, RiskProposal, Theta

__all__ = ["evaluate", "evaluate_parsed", "parse_market", "parse_position", "parse_risk"]


def _synthetic(symbol: str, now: float) -> Position:
    # Explicit opt-in only (POSITION_SOURCE=synthetic): a flat-PnL LONG at 1.0, so the kill
    # score can be watched without positions. Every proposal says position_source=synthetic.
    return Position(symbol=symbol, side="LONG", entry_price=1.0, unrealized_pnl=0.0, age_sec=0.0)


def parse_position(fields: Hash | None, symbol: str, *, needs_quantity: bool) -> PositionPart:
    """Parse a position hash once (when it changes); None when the key is absent."""
    if fields is None:
        return None
    if OVERSIZED in fields:
        return NoAdvice("invalid_position", fields[OVERSIZED])
    fast = parse_fast.position(fields, symbol, needs_quantity)
    if fast is not None:
        return fast
    try:
        return parse_reference.position(fields, symbol, needs_quantity)
    except InputProblem as bad:
        return NoAdvice("invalid_position", f"{bad.field} {bad.problem}")


def parse_market(fields: Hash | None) -> MarketPart:
    if fields is None:
        return None
    if OVERSIZED in fields:
        return NoAdvice("invalid_marketstate", fields[OVERSIZED])
    fast = parse_fast.market(fields)
    if fast is not None:
        return fast
    try:
        return ParsedMarket(
            parse_reference.market(fields),
            parse_reference.number(fields, "ts_timestamp", required=False),
        )
    except InputProblem as bad:
        return NoAdvice("invalid_marketstate", f"{bad.field} {bad.problem}")


def parse_risk(fields: Hash | None) -> RiskPart:
    if fields is not None and OVERSIZED in fields:
        return NoAdvice("invalid_risk", fields[OVERSIZED])
    try:
        return parse_reference.risk(fields)
    except InputProblem as bad:
        return NoAdvice("invalid_risk", f"{bad.field} {bad.problem}")


def _ahead(kind: str, field: str, stamp: float, now: float, skew: float) -> float | NoAdvice:
    """The age of an input stamped after `now`: 0 within the clock skew tolerance (hosts'
    clocks differ a little), else invalid input until the stamp comes within it."""
    if stamp - now <= skew:
        return 0.0
    return NoAdvice(
        f"invalid_{kind}",
        f"{field} is {stamp - now:.0f} s in the future (more than MAX_CLOCK_SKEW_SEC={skew:g})",
        recheck_at=stamp - skew,
    )


def evaluate_parsed(
    symbol: str,
    market_part: MarketPart,
    risk_part: RiskPart,
    position_part: PositionPart,
    now: float,
    *,
    max_input_age_sec: float,
    max_clock_skew_sec: float = 5.0,
    synthetic_positions: bool = False,
) -> Ready | NoAdvice:
    """Kernel inputs at `now` from parsed hashes, or why there is no advice.

    The checks run in a fixed order (position, its snapshot time and age, market state,
    its time, risk), so a symbol with several problems always reports the same one. Time
    fields are judged here, at `now`, not at parse time: a stamp ahead of the clock by
    more than `max_clock_skew_sec` is invalid until it comes within it (`recheck_at`).
    """
    skew = max_clock_skew_sec
    stale_at: float | None = None
    position_age: float | None = None
    if synthetic_positions:
        position = _synthetic(symbol, now)
    else:
        # position first: no position is the common, quiet reason for no advice
        if position_part is None:
            return NoAdvice("no_position", "position key is absent")
        if type(position_part) is NoAdvice:
            return position_part
        assert isinstance(position_part, ParsedPosition)
        snap = position_part.snapshot_at
        if snap is not None:
            position_age = now - snap
            if position_age < 0.0:
                ahead = _ahead("position", "ts_epoch", snap, now, skew)
                if isinstance(ahead, NoAdvice):
                    return ahead
                position_age = ahead
            if position_age > max_input_age_sec:
                return NoAdvice("stale_position", f"snapshot is {position_age:.0f} s old")
            stale_at = snap + max_input_age_sec
        age = position_part.age_sec
        if age is None:
            created = position_part.created_at
            age = 0.0 if created is None else now - created
            if age < 0.0:
                assert created is not None
                ahead = _ahead("position", "created_at", created, now, skew)
                if isinstance(ahead, NoAdvice):
                    return ahead
                age = ahead
        position = msgspec.structs.replace(position_part.position, age_sec=age)
    if market_part is None:
        return NoAdvice("missing_marketstate", "market state key is absent")
    if type(market_part) is NoAdvice:
        return market_part
    assert isinstance(market_part, ParsedMarket)
    market_ts = market_part.ts_timestamp
    market_age: float | None = None
    if market_ts is not None:
        market_age = now - market_ts
        if market_age < 0.0:
            ahead = _ahead("marketstate", "ts_timestamp", market_ts, now, skew)
            if isinstance(ahead, NoAdvice):
                return ahead
            market_age = ahead
        if market_age > max_input_age_sec:
            return NoAdvice("stale_marketstate", f"market state is {market_age:.0f} s old")
        edge = market_ts + max_input_age_sec
        stale_at = edge if stale_at is None else min(stale_at, edge)
    if type(risk_part) is NoAdvice:
        return risk_part
    risk = risk_part
    assert risk is None or isinstance(risk, RiskProposal)
    used_p1 = risk is not None and risk.stop_dist_pct is not None and risk.stop_dist_pct != 0.0
    return Ready(
        position=position,
        market=market_part.market,
        risk=risk,
        risk_source="p1" if used_p1 else "fallback",
        position_source="synthetic" if synthetic_positions else "redis_hash",
        marketstate_age_sec=market_age,
        position_snapshot_age_sec=position_age,
        stale_at=stale_at,
    )


def evaluate(
    inputs: SymbolInputs,
    now: float,
    *,
    theta: Theta,
    max_input_age_sec: float,
    max_clock_skew_sec: float = 5.0,
    synthetic_positions: bool = False,
) -> Ready | NoAdvice:
    """Turn one symbol's raw hashes into kernel inputs, or say why there is no advice.
    (The engine parses each hash once when it changes and calls `evaluate_parsed`.)"""
    symbol = inputs.symbol
    return evaluate_parsed(
        symbol,
        parse_market(inputs.marketstate),
        parse_risk(inputs.risk),
        None
        if synthetic_positions
        else parse_position(inputs.position, symbol, needs_quantity=theta.r_basis == "position"),
        now,
        max_input_age_sec=max_input_age_sec,
        max_clock_skew_sec=max_clock_skew_sec,
        synthetic_positions=synthetic_positions,
    )
