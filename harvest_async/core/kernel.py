"""The harvest kernel: locked formulas (spec v1.0), pure and calc-only.

`compute` follows the operation order of docs/kernel.md exactly so that the
floats are bit-identical to the original kernel. Unlike the original it refuses inputs
that would crash it or silently produce NaN, with an error naming the field.

Imports: the standard library and msgspec only (enforced by a test).
"""

from __future__ import annotations

from math import exp, isfinite, isnan

from harvest_async.core.models import (
    Decision,
    KComponents,
    MarketState,
    Position,
    RiskProposal,
    Theta,
)
from harvest_async.errors import KernelInputError

__all__ = ["KernelInputError", "compute", "tranche_weights", "validate_theta"]

# exp() raises OverflowError above this argument.
_EXP_MAX = 709.78

# Fixed sub-thresholds for the kill reason codes (constants of the locked spec, not tunables).
_SIGMA_SPIKE_CODE = 0.5
_TS_DROP_CODE = 0.2
_AGE_PENALTY_CODE = 0.5

_THIRD = (1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0)


def _first_bad(
    prefix: str, obj: object, names: tuple[str, ...], optional: frozenset[str] = frozenset()
) -> None:
    """Raise for the first non-finite field among `names` (None only where optional)."""
    for name in names:
        value = getattr(obj, name)
        if value is None:
            if name in optional:
                continue
            raise KernelInputError(f"{prefix}.{name}", "is required, got None")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise KernelInputError(f"{prefix}.{name}", f"expected a number, got {value!r}")
        try:
            finite = isfinite(value)
        except OverflowError:  # an int too large for a float
            finite = False
        if not finite:
            raise KernelInputError(f"{prefix}.{name}", f"must be finite, got {value!r}")


_POSITION_NUMBERS = (
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
_POSITION_OPTIONAL = frozenset(
    {"current_price", "peak_price", "trough_price", "current_sl", "current_tp", "entry_risk_usdt"}
)
_MARKET_NUMBERS = ("sigma", "ts", "p_trend", "p_mr", "p_chop")
_RISK_OPTIONAL = frozenset({"stop_dist_pct", "proposed_sl", "proposed_tp"})
_THETA_NUMBERS = tuple(f for f in Theta.__struct_fields__ if f != "r_basis")

# Theta objects already checked, keyed by id; the entry keeps the object alive so its id
# cannot be reused. Hashing a 23-field Struct per call would cost more than the kernel.
_theta_cache: dict[int, tuple[Theta, tuple[float, float, float]]] = {}


def validate_theta(theta: Theta) -> tuple[float, float, float]:
    """Check the tunables once per Theta object and return the (cached) tranche weights."""
    cached = _theta_cache.get(id(theta))
    if cached is not None and cached[0] is theta:
        return cached[1]
    _first_bad("theta", theta, _THETA_NUMBERS)
    for name in ("sigma_ref", "max_age_sec", "softmax_temp"):
        if getattr(theta, name) <= 0.0:
            raise KernelInputError(f"theta.{name}", f"must be > 0, got {getattr(theta, name)!r}")
    if theta.r_basis not in ("price", "position"):
        raise KernelInputError(
            "theta.r_basis", f"must be 'price' or 'position', got {theta.r_basis!r}"
        )
    weights = tranche_weights(theta)
    if len(_theta_cache) > 1024:  # tuning sweeps create many; keep memory bounded
        _theta_cache.clear()
    _theta_cache[id(theta)] = (theta, weights)
    return weights


def tranche_weights(theta: Theta) -> tuple[float, float, float]:
    """Softmax over (u1, u2, u3) at `softmax_temp`; exactly 1/3 each if the sum underflows."""
    temp = theta.softmax_temp
    args = (theta.u1 / temp, theta.u2 / temp, theta.u3 / temp)
    for name, arg in zip(("u1", "u2", "u3"), args, strict=True):
        if arg > _EXP_MAX:
            raise KernelInputError(
                f"theta.{name}", f"{name}/softmax_temp = {arg!r} overflows exp (max {_EXP_MAX})"
            )
    e1, e2, e3 = exp(args[0]), exp(args[1]), exp(args[2])
    total = e1 + e2 + e3
    if not isfinite(total):
        raise KernelInputError("theta.u1", "exp(u_i/softmax_temp) summed overflows; lower u1..u3")
    if total < 1e-9:
        return _THIRD
    return (e1 / total, e2 / total, e3 / total)


def _validate_inputs(position: Position, market: MarketState, risk: RiskProposal | None) -> None:
    if position.side not in {"LONG", "SHORT"}:
        raise KernelInputError("position.side", f"must be LONG or SHORT, got {position.side!r}")
    # Fast path: one finite sum over every number (None counts as 0); only when it is not
    # finite, or a value is not a number, look field by field to name the culprit (a pair
    # of finite-but-huge values can overflow the sum; the slow path then clears them).
    sl = position.current_sl
    cp = position.current_price
    pk = position.peak_price
    tr = position.trough_price
    tp = position.current_tp
    er = position.entry_risk_usdt
    try:
        total = (
            position.entry_price
            + position.unrealized_pnl
            + position.age_sec
            + position.quantity
            + market.sigma
            + market.ts
            + market.p_trend
            + market.p_mr
            + market.p_chop
            + (0.0 if sl is None else sl)
            + (0.0 if cp is None else cp)
            + (0.0 if pk is None else pk)
            + (0.0 if tr is None else tr)
            + (0.0 if tp is None else tp)
            + (0.0 if er is None else er)
        )
        fast_ok = isfinite(total)
    except (TypeError, OverflowError):
        fast_ok = False
    if not fast_ok:
        _first_bad("position", position, _POSITION_NUMBERS, _POSITION_OPTIONAL)
        _first_bad("market_state", market, _MARKET_NUMBERS)
    if position.entry_price < 0.0:
        raise KernelInputError(
            "position.entry_price", f"must be >= 0, got {position.entry_price!r}"
        )
    if position.entry_risk_usdt is not None and position.entry_risk_usdt <= 0.0:
        raise KernelInputError(
            "position.entry_risk_usdt", f"must be > 0 when given, got {position.entry_risk_usdt!r}"
        )
    if risk is not None:
        st, ps, pt = risk.stop_dist_pct, risk.proposed_sl, risk.proposed_tp
        try:
            risk_ok = isfinite(
                (0.0 if st is None else st)
                + (0.0 if ps is None else ps)
                + (0.0 if pt is None else pt)
            )
        except (TypeError, OverflowError):
            risk_ok = False
        if not risk_ok:
            _first_bad(
                "p1_proposal", risk, ("stop_dist_pct", "proposed_sl", "proposed_tp"), _RISK_OPTIONAL
            )


def compute(
    position: Position,
    market: MarketState,
    risk: RiskProposal | None,
    theta: Theta,
) -> Decision:
    """Harvest decision for one position. Raises KernelInputError on refused input."""
    weights = validate_theta(theta)
    _validate_inputs(position, market, risk)

    entry = position.entry_price
    stop = risk.stop_dist_pct if risk is not None else None
    if stop is None or stop == 0.0:
        stop = theta.fallback_stop_pct
    risk_unit = entry * stop
    if not risk_unit > 1e-9:  # max(entry * stop, 1e-9)
        risk_unit = 1e-9
    cost_est = (theta.cost_bps / 10000.0) * entry
    if theta.r_basis == "position":
        if position.quantity == 0.0 and position.entry_risk_usdt is None:
            raise KernelInputError("position.quantity", "must be non-zero for r_basis=position")
        # Whole-position R: PnL is whole-position quote currency, so risk and cost must be too.
        qty = abs(position.quantity)
        cost_est = cost_est * qty
        given = position.entry_risk_usdt
        risk_unit = given if given is not None else risk_unit * qty
        if not risk_unit > 1e-9:
            risk_unit = 1e-9
    r_net = (position.unrealized_pnl - cost_est) / risk_unit

    if r_net >= theta.T3_R:
        action = "PARTIAL_75"
        codes = ["harvest_partial_75"]
    elif r_net >= theta.T2_R:
        action = "PARTIAL_50"
        codes = ["harvest_partial_50"]
    elif r_net >= theta.T1_R:
        action = "PARTIAL_25"
        codes = ["harvest_partial_25"]
    else:
        action = "NONE"
        codes = []

    new_sl: float | None = None
    if not (r_net < theta.lock_R):
        sl = position.current_sl
        if position.side == "LONG":
            be = entry * (1.0 + theta.be_plus_pct)
            cand = be if sl is None else (be if be > sl else sl)
            if sl is None or cand > sl:
                new_sl = cand
        else:
            be = entry * (1.0 - theta.be_plus_pct)
            cand = be if sl is None else (be if be < sl else sl)
            if sl is None or cand < sl:
                new_sl = cand
        if new_sl is not None:
            codes.append("profit_lock")

    # Finite but extreme inputs can overflow (PnL 1e300 over the 1e-9 risk floor, entry
    # 1e308 * stop): refuse rather than publish inf/NaN. One sum checks all four.
    if not isfinite(risk_unit + cost_est + r_net + (0.0 if new_sl is None else new_sl)):
        for name, value in (
            ("risk_unit", risk_unit),
            ("cost_est", cost_est),
            ("R_net", r_net),
            ("new_sl_proposed", new_sl),
        ):
            if value is not None and not isfinite(value):
                raise KernelInputError(name, f"is not finite ({value!r}) for these inputs")

    # max(lo, min(x, hi)) written out with the builtins' exact tie semantics.
    p_trend = market.p_trend
    regime_flip = 1.0 if p_trend < theta.trend_min and (market.p_chop + market.p_mr) > 0.5 else 0.0
    x = market.sigma / theta.sigma_ref - 1.0
    cap = theta.sigma_spike_cap
    x = cap if cap < x else x
    sigma_spike = x if x > 0.0 else 0.0
    x = theta.ts_ref - market.ts
    cap = theta.ts_drop_cap
    x = cap if cap < x else x
    ts_drop = x if x > 0.0 else 0.0
    x = position.age_sec / theta.max_age_sec
    x = 1.0 if x > 1.0 else x
    age_penalty = x if x > 0.0 else 0.0

    z = (
        theta.k_regime_flip * regime_flip
        + theta.k_sigma_spike * sigma_spike
        + theta.k_ts_drop * ts_drop
        + theta.k_age_penalty * age_penalty
    )
    if isnan(z):  # huge kill weights of opposite sign: inf - inf
        raise KernelInputError("theta.k_regime_flip", "kill weights make the kill score undefined")
    # Stable limit for very negative z (only reachable with negative weights).
    kill_score = 1.0 / (1.0 + exp(-z)) if z > -_EXP_MAX else exp(z)

    if kill_score >= theta.kill_threshold:
        action = "FULL_CLOSE_PROPOSED"
        codes.append("kill_score_triggered")
        if regime_flip > 0.0:
            codes.append("regime_flip")
        if sigma_spike > _SIGMA_SPIKE_CODE:
            codes.append("sigma_spike")
        if ts_drop > _TS_DROP_CODE:
            codes.append("ts_drop")
        if age_penalty > _AGE_PENALTY_CODE:
            codes.append("age_penalty")

    return Decision(
        harvest_action=action,  # type: ignore[arg-type]
        new_sl_proposed=new_sl,
        R_net=r_net,
        risk_unit=risk_unit,
        cost_est=cost_est,
        kill_score=kill_score,
        reason_codes=tuple(codes),
        k_components=KComponents(regime_flip, sigma_spike, ts_drop, age_penalty),
        tranche_weights=weights,
    )
