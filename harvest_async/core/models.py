"""Frozen value types shared by the kernel, the engine and the adapters.

Pure: imports only the standard library and msgspec (the kernel's calc-only guarantee).
Construction does not validate values; `kernel.validate_*` does, so that decoding a
vector or a Redis hash and checking it stay two separate, cheap steps.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Action = Literal["NONE", "PARTIAL_25", "PARTIAL_50", "PARTIAL_75", "FULL_CLOSE_PROPOSED"]
ACTIONS: tuple[Action, ...] = (
    "NONE",
    "PARTIAL_25",
    "PARTIAL_50",
    "PARTIAL_75",
    "FULL_CLOSE_PROPOSED",
)
RBasis = Literal["price", "position"]


class Position(msgspec.Struct, frozen=True, gc=False):
    """An open position as the kernel sees it.

    `side`: exactly "LONG" takes the long branch; "SHORT" the short one (the service
    never passes anything else; the kernel rejects any other value).
    `quantity` and `entry_risk_usdt` are used only with `r_basis = "position"`.
    """

    symbol: str
    side: str
    entry_price: float
    unrealized_pnl: float
    age_sec: float = 0.0
    current_price: float | None = None
    peak_price: float | None = None
    trough_price: float | None = None
    current_sl: float | None = None
    current_tp: float | None = None
    quantity: float = 1.0
    entry_risk_usdt: float | None = None


class MarketState(msgspec.Struct, frozen=True, gc=False):
    sigma: float
    ts: float
    p_trend: float
    p_mr: float
    p_chop: float


class RiskProposal(msgspec.Struct, frozen=True, gc=False):
    """The P1 risk proposal; only `stop_dist_pct` influences the kernel."""

    stop_dist_pct: float | None = None
    proposed_sl: float | None = None
    proposed_tp: float | None = None


class Theta(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Kernel tunables with the locked defaults. Unknown names are a configuration error."""

    fallback_stop_pct: float = 0.02
    cost_bps: float = 10.0
    T1_R: float = 2.0
    T2_R: float = 4.0
    T3_R: float = 6.0
    u1: float = 0.0
    u2: float = 0.0
    u3: float = 0.0
    softmax_temp: float = 1.0
    lock_R: float = 1.5
    be_plus_pct: float = 0.002
    trend_min: float = 0.3
    sigma_ref: float = 0.01
    sigma_spike_cap: float = 2.0
    ts_ref: float = 0.3
    ts_drop_cap: float = 0.5
    max_age_sec: float = 86400.0
    k_regime_flip: float = 1.0
    k_sigma_spike: float = 0.5
    k_ts_drop: float = 0.5
    k_age_penalty: float = 0.3
    kill_threshold: float = 0.6
    r_basis: RBasis = "price"


class KComponents(msgspec.Struct, frozen=True, gc=False):
    regime_flip: float
    sigma_spike: float
    ts_drop: float
    age_penalty: float


class Decision(msgspec.Struct, frozen=True, gc=False):
    """The kernel's output for one position."""

    harvest_action: Action
    new_sl_proposed: float | None
    R_net: float
    risk_unit: float
    cost_est: float
    kill_score: float
    reason_codes: tuple[str, ...]
    k_components: KComponents
    tranche_weights: tuple[float, float, float]
