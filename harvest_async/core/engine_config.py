"""What an engine is configured with: tunables, publish rules, input limits, scope."""

from __future__ import annotations

import msgspec

from harvest_async.core import gate
from harvest_async.core.models import Theta

__all__ = ["EngineConfig"]


class EngineConfig(msgspec.Struct, frozen=True, kw_only=True):
    theta: Theta = Theta()
    gate: gate.GateConfig = gate.GateConfig()
    max_input_age_sec: float = 300.0
    max_clock_skew_sec: float = 5.0
    synthetic_positions: bool = False
    symbols: tuple[str, ...] | None = None  # None: every symbol that shows up
    proposal_ttl_sec: float = 0.0  # PROPOSAL_TTL_SEC: each proposal's valid_until; 0: none
