"""The input hashes as read from Redis (or a recording) and what parsing one gives.

Pure. The rules and reason texts: docs/inputs.md.
"""

from __future__ import annotations

import math
import sys
from datetime import UTC, datetime

import msgspec

from harvest_async.core.models import MarketState, Position, RiskProposal

__all__ = [
    "OVERSIZED",
    "SIDES",
    "USED_FIELDS",
    "Hash",
    "InputProblem",
    "MarketPart",
    "NoAdvice",
    "ParsedMarket",
    "ParsedPosition",
    "PositionPart",
    "Ready",
    "RiskPart",
    "SymbolInputs",
    "parse_epoch",
    "trim",
]

Hash = dict[str, str]

# A hash the reader refused because it breaks a size limit (MAX_INPUT_FIELDS,
# MAX_INPUT_VALUE_BYTES) arrives as this one field, saying which: invalid input.
OVERSIZED = "<oversized>"


class SymbolInputs(msgspec.Struct, frozen=True, gc=False):
    """The three input hashes of one symbol as read (None = key absent)."""

    symbol: str
    marketstate: Hash | None = None
    risk: Hash | None = None
    position: Hash | None = None


class Ready(msgspec.Struct, frozen=True, gc=False):
    position: Position
    market: MarketState
    risk: RiskProposal | None
    risk_source: str  # "p1" | "fallback"
    position_source: str  # "redis_hash" | "synthetic"
    marketstate_age_sec: float | None
    position_snapshot_age_sec: float | None
    stale_at: float | None  # when an input will be older than the limit, if known


class NoAdvice(msgspec.Struct, frozen=True, gc=False):
    """No proposal for this symbol. `reason` is a short label; `detail` says what and where.

    `recheck_at`: when this reason ends by itself with no new input (a timestamp ahead of
    the clock comes within the tolerance), so the engine evaluates the symbol again then.
    """

    reason: str
    detail: str
    recheck_at: float | None = None

    @property
    def invalid(self) -> bool:
        return self.reason.startswith("invalid_")

    def text(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


class ParsedMarket(msgspec.Struct, frozen=True, gc=False):
    market: MarketState
    ts_timestamp: float | None


class ParsedPosition(msgspec.Struct, frozen=True, gc=False):
    """A position hash, parsed once; its age is settled at evaluation time."""

    position: Position  # age_sec 0.0 here
    age_sec: float | None  # the hash's age_sec, when given
    created_at: float | None  # epoch seconds, when age_sec is not given
    snapshot_at: float | None  # ts_epoch


# What parsing one hash gives: parsed values, a reason for no advice, or None (absent).
MarketPart = ParsedMarket | NoAdvice | None
RiskPart = RiskProposal | NoAdvice | None
PositionPart = ParsedPosition | NoAdvice | None


class InputProblem(Exception):
    """A field of an input hash the service refuses (raised while parsing, caught by the
    parse functions, which turn it into NoAdvice)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


def parse_epoch(raw: str) -> float:
    """Epoch seconds from epoch seconds, epoch milliseconds or ISO-8601 text."""
    try:
        value = float(raw)
    except ValueError:
        text = raw.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise InputProblem(
                "created_at", f"is not an epoch or ISO-8601 time ({raw[:40]!r})"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # producers write UTC
        return moment.timestamp()
    if not math.isfinite(value):
        raise InputProblem("created_at", f"is not finite ({raw[:40]!r})")
    return value / 1000.0 if value > 1e11 else value


SIDES = {"LONG": "LONG", "SHORT": "SHORT", "FLAT": "FLAT"}


# The input fields the service reads. The readers (live and replay) keep only these: less
# memory per symbol, and a rewrite of an ignored field (buffer_size, mu, ...) is no change.
_USED = {
    "marketstate": frozenset({"sigma", "ts", "p_trend", "p_mr", "p_chop", "ts_timestamp"}),
    "risk": frozenset({"stop_dist_pct", "proposed_sl", "proposed_tp"}),
    "position": frozenset(
        {
            "side", "entry_price", "unrealized_pnl", "current_price", "mark_price", "quantity",
            "position_amt", "ts_epoch", "stop_loss", "take_profit", "created_at", "age_sec",
            "current_sl", "current_tp", "peak_price", "trough_price", "entry_risk_usdt",
        }
    ),
}  # fmt: skip

# The same names in a fixed order, for readers that ask for exactly these (HMGET)
USED_FIELDS: dict[str, tuple[str, ...]] = {
    kind: tuple(sys.intern(n) for n in sorted(names)) for kind, names in _USED.items()
}

_CANONICAL = {kind: {sys.intern(n): sys.intern(n) for n in names} for kind, names in _USED.items()}

# A reply that is not a hash (WRONGTYPE: another type was written under the key) becomes
# a value the parsers reject in a field it requires, so the symbol is retracted as invalid.
_NOT_A_HASH_FIELD = {"marketstate": "sigma", "risk": "stop_dist_pct", "position": "side"}


def trim(kind: str, fields: dict[str, str] | Exception) -> dict[str, str] | None:
    if isinstance(fields, Exception):
        return {_NOT_A_HASH_FIELD[kind]: f"<not a hash: {fields}>"}
    if not fields:
        return None
    if OVERSIZED in fields:
        return {OVERSIZED: fields[OVERSIZED]}
    # keys from the canonical (interned) names: the parser makes a new string per key
    # and reply, which would cost ~1 KiB per tracked symbol in copies of "unrealized_pnl"
    names = _CANONICAL[kind]
    out = {names[k]: v for k, v in fields.items() if k in names}
    side = out.get("side")
    if side is not None and len(side) < 8:
        out["side"] = sys.intern(side)  # LONG / SHORT / FLAT: shared, not one per symbol
    return out
