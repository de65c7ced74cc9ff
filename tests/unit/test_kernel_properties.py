"""Properties of the locked formulas that must hold for every input (hypothesis)."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harvest_async.core.kernel import KernelInputError, compute
from harvest_async.core.models import Decision, MarketState, Position, RiskProposal, Theta

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LADDER_RANK = {
    "harvest_partial_25": 1,
    "harvest_partial_50": 2,
    "harvest_partial_75": 3,
}


def ladder_rank(d: Decision) -> int:
    """NONE < P25 < P50 < P75: the ladder's result, kept in the reason codes under a kill."""
    ranks = [LADDER_RANK[code] for code in d.reason_codes if code in LADDER_RANK]
    assert len(ranks) <= 1
    return ranks[0] if ranks else 0


def finite(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False)


prices = finite(0.0, 1e7)
pnls = finite(-1e7, 1e7)
probabilities = finite(0.0, 1.0)
optional_stop = st.none() | finite(-1e7, 1e7)

markets = st.builds(
    MarketState,
    sigma=finite(0.0, 1.0),
    ts=finite(-2.0, 2.0),
    p_trend=probabilities,
    p_mr=probabilities,
    p_chop=probabilities,
)
risks = st.none() | st.builds(
    RiskProposal,
    stop_dist_pct=st.none() | finite(-0.5, 0.5),
    proposed_sl=st.none() | prices,
)


@st.composite
def thetas(draw: st.DrawFn) -> Theta:
    """Any valid tunables; the ladder's triggers are drawn in order (T1 <= T2 <= T3)."""
    t1, t2, t3 = sorted(draw(st.lists(finite(-50.0, 50.0), min_size=3, max_size=3)))
    values: dict[str, Any] = {
        "fallback_stop_pct": draw(finite(-0.5, 0.5)),
        "cost_bps": draw(finite(0.0, 100.0)),
        "T1_R": t1,
        "T2_R": t2,
        "T3_R": t3,
        "u1": draw(finite(-100.0, 100.0)),
        "u2": draw(finite(-100.0, 100.0)),
        "u3": draw(finite(-100.0, 100.0)),
        "softmax_temp": draw(finite(0.2, 10.0)),
        "lock_R": draw(finite(-50.0, 50.0)),
        "be_plus_pct": draw(finite(-0.1, 0.1)),
        "trend_min": draw(probabilities),
        "sigma_ref": draw(finite(1e-4, 1.0)),
        "sigma_spike_cap": draw(finite(0.0, 5.0)),
        "ts_ref": draw(finite(-1.0, 1.0)),
        "ts_drop_cap": draw(finite(0.0, 2.0)),
        "max_age_sec": draw(finite(1.0, 1e7)),
        "k_regime_flip": draw(finite(-5.0, 5.0)),
        "k_sigma_spike": draw(finite(-5.0, 5.0)),
        "k_ts_drop": draw(finite(-5.0, 5.0)),
        "k_age_penalty": draw(finite(-5.0, 5.0)),
        "kill_threshold": draw(finite(0.0, 1.0)),
        "r_basis": draw(st.sampled_from(["price", "position"])),
    }
    return Theta(**values)


@st.composite
def positions(draw: st.DrawFn, pnl: float | None = None) -> Position:
    entry = draw(prices)
    # a stop anywhere, or near the entry (where the lock decisions are close calls)
    near = st.floats(min_value=-0.01, max_value=0.01).map(lambda f: entry * (1.0 + f))
    return Position(
        symbol="SYM",
        side=draw(st.sampled_from(["LONG", "SHORT"])),
        entry_price=entry,
        unrealized_pnl=pnl if pnl is not None else draw(pnls),
        age_sec=draw(finite(-1e5, 1e7)),
        # current/peak/trough price and current_tp influence no output (spec)
        current_price=105.0,
        current_sl=draw(optional_stop | near),
        quantity=draw(finite(-100.0, 100.0).filter(lambda q: q != 0.0)),
        entry_risk_usdt=draw(st.none() | finite(1e-3, 1e6)),
    )


# --- the profit lock ---------------------------------------------------------------------


@SETTINGS
@given(pos=positions(), market=markets, risk=risks, theta=thetas())
def test_lock_never_loosens_a_stop(
    pos: Position, market: MarketState, risk: RiskProposal | None, theta: Theta
) -> None:
    d = compute(pos, market, risk, theta)
    if d.new_sl_proposed is None:
        assert "profit_lock" not in d.reason_codes
        return
    assert "profit_lock" in d.reason_codes
    assert not d.R_net < theta.lock_R  # only proposed once the lock gate is passed
    sign = 1.0 if pos.side == "LONG" else -1.0
    assert d.new_sl_proposed == pos.entry_price * (1.0 + sign * theta.be_plus_pct)
    sl = pos.current_sl
    if sl is not None:
        if pos.side == "LONG":
            assert d.new_sl_proposed > sl
        else:
            assert d.new_sl_proposed < sl


# --- the action ladder ---------------------------------------------------------------------


@SETTINGS
@given(
    data=st.data(),
    pnl_pair=st.tuples(pnls, pnls),
    market=markets,
    risk=risks,
    theta=thetas(),
)
def test_ladder_never_decreases_as_pnl_grows(
    data: st.DataObject,
    pnl_pair: tuple[float, float],
    market: MarketState,
    risk: RiskProposal | None,
    theta: Theta,
) -> None:
    low, high = sorted(pnl_pair)
    pos_low = data.draw(positions(pnl=low))
    pos_high = msgspec.structs.replace(pos_low, unrealized_pnl=high)
    d_low = compute(pos_low, market, risk, theta)
    d_high = compute(pos_high, market, risk, theta)
    # same market, age and weights: the kill part cannot differ between the two
    assert d_low.kill_score == d_high.kill_score
    assert d_low.k_components == d_high.k_components
    assert d_low.R_net <= d_high.R_net
    assert ladder_rank(d_low) <= ladder_rank(d_high)
    if d_low.harvest_action != "FULL_CLOSE_PROPOSED":
        ladder = ("NONE", "PARTIAL_25", "PARTIAL_50", "PARTIAL_75")
        assert d_low.harvest_action == ladder[ladder_rank(d_low)]
        assert ladder.index(d_low.harvest_action) <= ladder.index(d_high.harvest_action)


# --- the kill score --------------------------------------------------------------------------

non_negative_weights = finite(0.0, 5.0)


@SETTINGS
@given(
    pos=positions(),
    market=markets,
    risk=risks,
    theta=thetas(),
    weights=st.tuples(*[non_negative_weights] * 4),
)
def test_non_negative_weights_keep_k_in_half_to_one(
    pos: Position,
    market: MarketState,
    risk: RiskProposal | None,
    theta: Theta,
    weights: tuple[float, float, float, float],
) -> None:
    theta = msgspec.structs.replace(
        theta,
        k_regime_flip=weights[0],
        k_sigma_spike=weights[1],
        k_ts_drop=weights[2],
        k_age_penalty=weights[3],
    )
    d = compute(pos, market, risk, theta)
    assert 0.5 <= d.kill_score < 1.0
    killed = d.kill_score >= theta.kill_threshold
    assert (d.harvest_action == "FULL_CLOSE_PROPOSED") == killed
    assert ("kill_score_triggered" in d.reason_codes) == killed


@SETTINGS
@given(
    pos=positions(),
    market=markets,
    weights=st.tuples(*[finite(0.0, 1e308)] * 4),
)
def test_any_non_negative_weights_keep_k_in_half_to_one_inclusive(
    pos: Position, market: MarketState, weights: tuple[float, float, float, float]
) -> None:
    theta = Theta(
        k_regime_flip=weights[0],
        k_sigma_spike=weights[1],
        k_ts_drop=weights[2],
        k_age_penalty=weights[3],
    )
    d = compute(pos, market, None, theta)
    assert 0.5 <= d.kill_score <= 1.0


@SETTINGS
@given(pos=positions(), market=markets, risk=risks, theta=thetas())
def test_valid_inputs_give_well_formed_outputs(
    pos: Position, market: MarketState, risk: RiskProposal | None, theta: Theta
) -> None:
    d = compute(pos, market, risk, theta)  # valid inputs are never refused
    assert d.risk_unit >= 1e-9
    assert 0.0 <= d.kill_score <= 1.0
    k = d.k_components
    assert k.regime_flip in (0.0, 1.0)
    assert 0.0 <= k.sigma_spike <= max(theta.sigma_spike_cap, 0.0)
    assert 0.0 <= k.ts_drop <= max(theta.ts_drop_cap, 0.0)
    assert 0.0 <= k.age_penalty <= 1.0
    assert math.fsum(d.tranche_weights) == pytest.approx(1.0)
    assert all(w >= 0.0 for w in d.tranche_weights)


# --- determinism -------------------------------------------------------------------------------


@SETTINGS
@given(pos=positions(), market=markets, risk=risks, theta=thetas())
def test_identical_inputs_give_identical_outputs(
    pos: Position, market: MarketState, risk: RiskProposal | None, theta: Theta
) -> None:
    first = compute(pos, market, risk, theta)
    again = compute(pos, market, risk, theta)
    # equal but distinct objects: a fresh Theta does not hit the kernel's per-object cache
    pos_copy = msgspec.json.decode(msgspec.json.encode(pos), type=Position)
    market_copy = msgspec.json.decode(msgspec.json.encode(market), type=MarketState)
    fresh_theta = msgspec.structs.replace(theta)
    fresh_risk = None if risk is None else msgspec.structs.replace(risk)
    assert fresh_theta is not theta
    other = compute(pos_copy, market_copy, fresh_risk, fresh_theta)
    encoded = msgspec.json.encode(first)
    assert first == again == other
    assert msgspec.json.encode(again) == encoded == msgspec.json.encode(other)
    assert repr(first) == repr(other)


# --- robustness: arbitrary floats ------------------------------------------------------------

any_float = st.floats(allow_nan=True, allow_infinity=True)
any_optional = st.none() | any_float


@st.composite
def wild_thetas(draw: st.DrawFn) -> Theta:
    names = [n for n in Theta.__struct_fields__ if n != "r_basis"]
    values: dict[str, Any] = {}
    for name in names:
        if draw(st.booleans()):  # leave about half at their defaults
            values[name] = draw(any_float)
    values["r_basis"] = draw(st.sampled_from(["price", "position"]))
    return Theta(**values)


@SETTINGS
@given(
    pos=st.builds(
        Position,
        symbol=st.just("SYM"),
        side=st.sampled_from(["LONG", "SHORT", "FLAT", "long", ""]),
        entry_price=any_float,
        unrealized_pnl=any_float,
        age_sec=any_float,
        current_price=any_optional,
        peak_price=any_optional,
        trough_price=any_optional,
        current_sl=any_optional,
        current_tp=any_optional,
        quantity=any_float,
        entry_risk_usdt=any_optional,
    ),
    market=st.builds(
        MarketState,
        sigma=any_float,
        ts=any_float,
        p_trend=any_float,
        p_mr=any_float,
        p_chop=any_float,
    ),
    risk=st.none()
    | st.builds(
        RiskProposal, stop_dist_pct=any_optional, proposed_sl=any_optional, proposed_tp=any_optional
    ),
    theta=wild_thetas(),
)
def test_compute_raises_only_kernel_input_error(
    pos: Position, market: MarketState, risk: RiskProposal | None, theta: Theta
) -> None:
    try:
        d = compute(pos, market, risk, theta)
    except KernelInputError as exc:
        # an input or tunable, or an output that finite-but-extreme inputs overflow
        assert exc.field.split(".")[0] in {"position", "market_state", "p1_proposal", "theta"} or (
            exc.field in {"risk_unit", "cost_est", "R_net", "new_sl_proposed"}
        )
        assert str(exc).startswith(exc.field + ": ")
        return
    assert isinstance(d, Decision)
    assert d.harvest_action in {
        "NONE",
        "PARTIAL_25",
        "PARTIAL_50",
        "PARTIAL_75",
        "FULL_CLOSE_PROPOSED",
    }
