"""The kernel refuses bad inputs and tunables with an error naming the field, and computes
the stable limits the spec allows (docs/kernel.md, "What the kernel refuses")."""

from __future__ import annotations

import math

import msgspec
import pytest

from harvest_async.core.kernel import KernelInputError, compute, tranche_weights, validate_theta
from harvest_async.core.models import MarketState, Position, RiskProposal, Theta

THIRD = 1.0 / 3.0
BAD_FLOATS = [math.nan, math.inf, -math.inf]
BAD_IDS = ["nan", "inf", "-inf"]

POSITION_NUMBERS = (
    "entry_price",
    "unrealized_pnl",
    "age_sec",
    "current_price",
    "peak_price",
    "trough_price",
    "current_sl",
    "current_tp",
    "quantity",
    "entry_risk_usdt",
)
MARKET_NUMBERS = ("sigma", "ts", "p_trend", "p_mr", "p_chop")
RISK_NUMBERS = ("stop_dist_pct", "proposed_sl", "proposed_tp")
THETA_NUMBERS = tuple(name for name in Theta.__struct_fields__ if name != "r_basis")


def position(**changes: object) -> Position:
    base = Position(
        symbol="BTCUSDT",
        side="LONG",
        entry_price=100.0,
        unrealized_pnl=5.0,
        age_sec=3600.0,
        current_price=105.0,
        peak_price=106.0,
        trough_price=99.0,
        current_sl=99.0,
        current_tp=110.0,
    )
    return msgspec.structs.replace(base, **changes)


def market(**changes: object) -> MarketState:
    base = MarketState(sigma=0.01, ts=0.35, p_trend=0.5, p_mr=0.2, p_chop=0.3)
    return msgspec.structs.replace(base, **changes)


def risk(**changes: object) -> RiskProposal:
    base = RiskProposal(stop_dist_pct=0.02, proposed_sl=99.0, proposed_tp=110.0)
    return msgspec.structs.replace(base, **changes)


def raises_for(
    field: str, pos: Position, mkt: MarketState, rp: RiskProposal | None, th: Theta
) -> str:
    with pytest.raises(KernelInputError) as info:
        compute(pos, mkt, rp, th)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    return str(info.value)


# --- inputs ----------------------------------------------------------------------------


def test_baseline_inputs_compute() -> None:
    d = compute(position(), market(), risk(), Theta())
    assert d.harvest_action == "PARTIAL_25"
    assert d.R_net == 2.45


@pytest.mark.parametrize("bad", BAD_FLOATS, ids=BAD_IDS)
@pytest.mark.parametrize("name", POSITION_NUMBERS)
def test_non_finite_position_field_is_refused(name: str, bad: float) -> None:
    message = raises_for(f"position.{name}", position(**{name: bad}), market(), risk(), Theta())
    assert "finite" in message


@pytest.mark.parametrize("bad", BAD_FLOATS, ids=BAD_IDS)
@pytest.mark.parametrize("name", MARKET_NUMBERS)
def test_non_finite_market_field_is_refused(name: str, bad: float) -> None:
    message = raises_for(f"market_state.{name}", position(), market(**{name: bad}), risk(), Theta())
    assert "finite" in message


@pytest.mark.parametrize("bad", BAD_FLOATS, ids=BAD_IDS)
@pytest.mark.parametrize("name", RISK_NUMBERS)
def test_non_finite_p1_field_is_refused(name: str, bad: float) -> None:
    message = raises_for(f"p1_proposal.{name}", position(), market(), risk(**{name: bad}), Theta())
    assert "finite" in message


def test_error_message_shows_the_value() -> None:
    message = raises_for(
        "position.entry_price", position(entry_price=math.nan), market(), risk(), Theta()
    )
    assert message == "position.entry_price: must be finite, got nan"
    message = raises_for("market_state.sigma", position(), market(sigma=math.inf), risk(), Theta())
    assert message == "market_state.sigma: must be finite, got inf"


def test_first_bad_field_is_named_when_several_are_bad() -> None:
    raises_for(
        "position.entry_price",
        position(entry_price=math.nan, age_sec=math.nan),
        market(sigma=math.nan),
        risk(),
        Theta(),
    )


@pytest.mark.parametrize("value", ["100", b"1", [1.0]], ids=["str", "bytes", "list"])
def test_non_number_is_refused(value: object) -> None:
    message = raises_for(
        "position.entry_price", position(entry_price=value), market(), risk(), Theta()
    )
    assert "number" in message


def test_huge_finite_values_whose_sum_overflows_are_accepted() -> None:
    """The kernel's fast check sums the inputs; an overflowing sum must not reject them."""
    pos = position(current_price=1e308, peak_price=1e308, trough_price=1e308, current_tp=1e308)
    d = compute(pos, market(), risk(proposed_sl=1e308, proposed_tp=1e308), Theta())
    assert d == compute(position(), market(), risk(), Theta())


@pytest.mark.parametrize("side", ["long", "Long", "BUY", "FLAT", "", "SHORT "])
def test_unknown_side_is_refused(side: str) -> None:
    message = raises_for("position.side", position(side=side), market(), risk(), Theta())
    assert repr(side) in message


def test_negative_entry_price_is_refused() -> None:
    raises_for("position.entry_price", position(entry_price=-1.0), market(), risk(), Theta())


@pytest.mark.parametrize("value", [0.0, -5.0])
def test_non_positive_entry_risk_is_refused(value: float) -> None:
    raises_for(
        "position.entry_risk_usdt", position(entry_risk_usdt=value), market(), risk(), Theta()
    )


# --- tunables --------------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_FLOATS, ids=BAD_IDS)
@pytest.mark.parametrize("name", THETA_NUMBERS)
def test_non_finite_tunable_is_refused(name: str, bad: float) -> None:
    theta = Theta(**{name: bad})  # type: ignore[arg-type]
    message = raises_for(f"theta.{name}", position(), market(), risk(), theta)
    assert "finite" in message
    with pytest.raises(KernelInputError):
        validate_theta(theta)


@pytest.mark.parametrize("value", [0.0, -0.0, -1.0, -1e-300])
@pytest.mark.parametrize("name", ["sigma_ref", "max_age_sec", "softmax_temp"])
def test_divisor_tunable_must_be_positive(name: str, value: float) -> None:
    message = raises_for(
        f"theta.{name}",
        position(),
        market(),
        risk(),
        Theta(**{name: value}),  # type: ignore[arg-type]
    )
    assert "> 0" in message


@pytest.mark.parametrize("name", ["u1", "u2", "u3"])
def test_u_overflow_is_refused(name: str) -> None:
    message = raises_for(
        f"theta.{name}",
        position(),
        market(),
        risk(),
        Theta(**{name: 709.79}),  # type: ignore[arg-type]
    )
    assert "softmax_temp" in message
    assert "overflow" in message


def test_small_softmax_temp_overflow_is_refused() -> None:
    message = raises_for("theta.u2", position(), market(), risk(), Theta(u2=1.0, softmax_temp=1e-3))
    assert "1000.0" in message


def test_u_just_below_the_overflow_limit_is_accepted() -> None:
    weights = tranche_weights(Theta(u1=709.0, u2=0.0, u3=0.0))
    assert all(math.isfinite(w) for w in weights)
    assert weights[0] == pytest.approx(1.0)


@pytest.mark.parametrize("u", [-800.0, -1e6, -1e300])
def test_all_u_underflowing_gives_exact_thirds(u: float) -> None:
    d = compute(position(), market(), risk(), Theta(u1=u, u2=u, u3=u))
    assert d.tranche_weights == (THIRD, THIRD, THIRD)


def test_tiny_sum_below_1e_9_gives_exact_thirds() -> None:
    # exp(-25) * 3 is about 4e-11: not zero, but below the spec's 1e-9 floor
    assert tranche_weights(Theta(u1=-25.0, u2=-25.0, u3=-25.0)) == (THIRD, THIRD, THIRD)


def test_one_u_underflowing_alone_gets_zero_weight() -> None:
    assert tranche_weights(Theta(u1=-1000.0)) == (0.0, 0.5, 0.5)


def test_default_weights_are_exact_thirds() -> None:
    assert tranche_weights(Theta()) == (THIRD, THIRD, THIRD)


def test_unknown_r_basis_is_refused() -> None:
    theta = Theta(r_basis="quote")  # type: ignore[arg-type]
    raises_for("theta.r_basis", position(), market(), risk(), theta)


def test_theta_with_unknown_field_is_refused_when_decoded() -> None:
    with pytest.raises(msgspec.ValidationError, match="T4_R"):
        msgspec.json.decode(b'{"T1_R": 1.0, "T4_R": 8.0}', type=Theta)
    with pytest.raises(msgspec.ValidationError, match="killthreshold"):
        msgspec.convert({"killthreshold": 0.5}, Theta)


def test_theta_decoding_is_strict_about_types_but_takes_ints() -> None:
    assert msgspec.json.decode(b'{"T1_R": 3}', type=Theta).T1_R == 3.0
    with pytest.raises(msgspec.ValidationError, match=r"\$\.T1_R"):
        msgspec.json.decode(b'{"T1_R": "3"}', type=Theta)
    with pytest.raises(msgspec.ValidationError, match="r_basis"):
        msgspec.json.decode(b'{"r_basis": "quote"}', type=Theta)


def test_valid_theta_is_accepted_repeatedly() -> None:
    theta = Theta(T1_R=1.0)
    assert validate_theta(theta) == validate_theta(theta) == (THIRD, THIRD, THIRD)


# --- the stable limit for very negative z ----------------------------------------------


def _flip_market() -> MarketState:
    # regime flip (p_trend < 0.3 and p_chop + p_mr > 0.5); no sigma spike, no ts drop
    return MarketState(sigma=0.0, ts=1.0, p_trend=0.1, p_mr=0.4, p_chop=0.5)


def _kill_only(z: float) -> Theta:
    """z equals k_regime_flip exactly: the other components are zero."""
    return Theta(k_regime_flip=z, k_sigma_spike=0.0, k_ts_drop=0.0, k_age_penalty=0.0)


@pytest.mark.parametrize("z", [-709.79, -710.0, -745.0, -800.0, -1e6, -1e300])
def test_very_negative_z_gives_k_near_zero(z: float) -> None:
    d = compute(position(age_sec=0.0), _flip_market(), risk(), _kill_only(z))
    assert d.k_components.regime_flip == 1.0
    assert math.isfinite(d.kill_score)
    assert 0.0 <= d.kill_score < 1e-300
    assert d.harvest_action != "FULL_CLOSE_PROPOSED"


@pytest.mark.parametrize("z", [-700.0, -709.0, -709.7])
def test_k_is_continuous_around_the_exp_limit(z: float) -> None:
    d = compute(position(age_sec=0.0), _flip_market(), risk(), _kill_only(z))
    assert d.kill_score == pytest.approx(math.exp(z), rel=1e-12)


def test_negative_weights_with_all_components() -> None:
    theta = Theta(
        k_regime_flip=-500.0, k_sigma_spike=-500.0, k_ts_drop=-500.0, k_age_penalty=-500.0
    )
    mkt = MarketState(sigma=1.0, ts=-5.0, p_trend=0.0, p_mr=0.5, p_chop=0.5)
    d = compute(position(age_sec=1e9), mkt, risk(), theta)
    assert d.kill_score == 0.0
    assert d.harvest_action == "PARTIAL_25"


# --- valid but odd inputs behave like the reference vectors ----------------------------


def test_negative_pnl() -> None:
    d = compute(position(unrealized_pnl=-39.0, current_sl=None), market(), risk(), Theta())
    assert d.R_net == -19.55
    assert d.harvest_action == "NONE"
    assert d.new_sl_proposed is None
    assert d.reason_codes == ()


def test_negative_age_has_no_age_penalty() -> None:
    d = compute(position(age_sec=-500.0), market(), risk(), Theta())
    assert d.k_components.age_penalty == 0.0
    assert d.harvest_action == "PARTIAL_25"
    assert d.new_sl_proposed == 100.2


def test_short_with_stop_at_zero_never_locks() -> None:
    d = compute(position(side="SHORT", current_sl=0.0), market(), risk(), Theta())
    assert d.new_sl_proposed is None
    assert d.reason_codes == ("harvest_partial_25",)


def test_short_without_stop_locks_below_entry() -> None:
    d = compute(position(side="SHORT", current_sl=None), market(), risk(), Theta())
    assert d.new_sl_proposed == 100.0 * (1.0 - 0.002)
    assert "profit_lock" in d.reason_codes


def test_long_with_stop_at_zero_locks() -> None:
    d = compute(position(current_sl=0.0), market(), risk(), Theta())
    assert d.new_sl_proposed == 100.0 * (1.0 + 0.002)


def test_entry_zero_uses_the_risk_floor() -> None:
    d = compute(position(entry_price=0.0), market(), risk(), Theta())
    assert d.risk_unit == 1e-9
    assert d.cost_est == 0.0
    assert d.R_net == 5.0 / 1e-9


@pytest.mark.parametrize("stop", [None, 0.0])
def test_missing_or_zero_stop_uses_the_fallback(stop: float | None) -> None:
    d = compute(position(), market(), risk(stop_dist_pct=stop), Theta(fallback_stop_pct=0.05))
    assert d.risk_unit == 100.0 * 0.05
    assert compute(position(), market(), None, Theta(fallback_stop_pct=0.05)) == d


# --- r_basis -----------------------------------------------------------------------------


def test_default_r_basis_ignores_quantity_and_entry_risk() -> None:
    plain = compute(position(), market(), risk(), Theta())
    sized = compute(position(quantity=7.0, entry_risk_usdt=123.0), market(), risk(), Theta())
    assert sized == plain
    assert Theta().r_basis == "price"


@pytest.mark.parametrize("qty", [3.0, -3.0, 0.25])
def test_position_r_basis_scales_risk_and_cost_by_quantity(qty: float) -> None:
    entry, pnl = 100.0, 30.0
    theta = Theta(r_basis="position")
    d = compute(position(unrealized_pnl=pnl, quantity=qty), market(), risk(), theta)
    per_unit_risk = max(entry * 0.02, 1e-9)
    per_unit_cost = (theta.cost_bps / 10000.0) * entry
    assert d.risk_unit == per_unit_risk * abs(qty)  # whole-position risk, reported
    assert d.cost_est == per_unit_cost * abs(qty)  # whole-position cost, reported
    assert d.R_net == (pnl - per_unit_cost * abs(qty)) / (per_unit_risk * abs(qty))


def test_position_r_basis_divides_by_entry_risk_usdt_when_given() -> None:
    entry, pnl, qty = 100.0, 30.0, 3.0
    theta = Theta(r_basis="position")
    d = compute(
        position(unrealized_pnl=pnl, quantity=qty, entry_risk_usdt=12.0), market(), risk(), theta
    )
    per_unit_cost = (theta.cost_bps / 10000.0) * entry
    assert d.risk_unit == 12.0  # the given whole-position risk is what is reported
    assert d.cost_est == per_unit_cost * qty
    assert d.R_net == (pnl - per_unit_cost * qty) / 12.0


def test_position_r_basis_with_quantity_one_matches_price_basis() -> None:
    pos = position(quantity=1.0)
    assert compute(pos, market(), risk(), Theta(r_basis="position")) == compute(
        pos, market(), risk(), Theta()
    )


def test_position_r_basis_zero_quantity_is_refused() -> None:
    # a zero quantity would put the whole-position risk on the 1e-9 floor: nonsense R
    with pytest.raises(KernelInputError) as info:
        compute(position(quantity=0.0), market(), risk(), Theta(r_basis="position"))
    assert info.value.field == "position.quantity"


def test_position_r_basis_zero_quantity_with_entry_risk_is_fine() -> None:
    d = compute(
        position(quantity=0.0, entry_risk_usdt=5.0), market(), risk(), Theta(r_basis="position")
    )
    assert d.risk_unit == 5.0
