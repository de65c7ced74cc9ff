"""Redis hash fields <-> kernel inputs and proposal fields. Validation happens here, once
(the rules and reason texts: docs/inputs.md).

Pure (no I/O): the engine calls `evaluate` with the raw hashes it fetched (or that a
replay holds) and the current time; the result is either kernel inputs or a reason why
there is no advice for the symbol.
"""

from __future__ import annotations

import hashlib
import math
import sys
from datetime import UTC, datetime

import msgspec

from harvest_async.core.models import Decision, MarketState, Position, RiskProposal, Theta

__all__ = [
    "OVERSIZED",
    "USED_FIELDS",
    "NoAdvice",
    "ParsedMarket",
    "ParsedPosition",
    "Ready",
    "SymbolInputs",
    "evaluate",
    "evaluate_parsed",
    "parse_epoch",
    "parse_market",
    "parse_position",
    "parse_risk",
    "plan_id_for",
    "proposal_fields",
    "theta_id_for",
    "trim",
]

Hash = dict[str, str]

SCHEMA_VERSION = "2"

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


class _Bad(Exception):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


def _text(fields: Hash, name: str) -> str | None:
    raw = fields.get(name)
    if raw is None:
        return None
    raw = raw.strip()
    if raw == "" or raw in ("None", "null", "NULL", "none"):
        return None
    return raw


def _number(fields: Hash, name: str, *, required: bool) -> float | None:
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
            raise _Bad(name, "is missing")
        return None
    try:
        value = float(raw)
    except ValueError:
        raise _Bad(name, f"is not a number ({raw[:40]!r})") from None
    if not math.isfinite(value):
        raise _Bad(name, f"is not finite ({raw[:40]!r})")
    return value


def _lenient(fields: Hash, name: str) -> float | None:
    """Fields that influence no output: a bad value is dropped, not fatal."""
    try:
        return _number(fields, name, required=False)
    except _Bad:
        return None


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
            raise _Bad("created_at", f"is not an epoch or ISO-8601 time ({raw[:40]!r})") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # producers write UTC
        return moment.timestamp()
    if not math.isfinite(value):
        raise _Bad("created_at", f"is not finite ({raw[:40]!r})")
    return value / 1000.0 if value > 1e11 else value


def _market(fields: Hash) -> MarketState:
    sigma = _number(fields, "sigma", required=True)
    ts = _number(fields, "ts", required=True)
    probs = [_number(fields, name, required=True) for name in ("p_trend", "p_mr", "p_chop")]
    assert sigma is not None and ts is not None
    if sigma < 0.0:
        raise _Bad("sigma", f"is negative ({sigma!r})")
    # Trend strength is a magnitude (the producer writes |mu| / (sigma + eps), never < 0).
    # The locked kernel caps a negative one into a larger ts_drop (spec formula
    # ts_drop = clamp(ts_ref - ts, 0, ts_drop_cap), vector edge::ts_negative_cap), which
    # pushes the kill score towards a full close: the service refuses it instead, the
    # kernel keeps the spec (docs/kernel.md "Inputs", docs/inputs.md "Market state").
    # No upper bound: any ts >= ts_ref contributes nothing to the kill score.
    if ts < 0.0:
        raise _Bad("ts", f"is negative ({ts!r})")
    for name, value in zip(("p_trend", "p_mr", "p_chop"), probs, strict=True):
        assert value is not None
        if not 0.0 <= value <= 1.0:
            raise _Bad(name, f"is outside [0, 1] ({value!r})")
    return MarketState(sigma, ts, probs[0], probs[1], probs[2])  # type: ignore[arg-type]


def _age_info(fields: Hash) -> tuple[float | None, float | None]:
    """(age_sec, created_at epoch): age is `age_sec` if given, else now - created_at."""
    age = _number(fields, "age_sec", required=False)
    if age is not None:
        return age, None
    raw = _text(fields, "created_at")
    if raw is None:
        return None, None
    return None, parse_epoch(raw)


_SIDES = {"LONG": "LONG", "SHORT": "SHORT", "FLAT": "FLAT"}


def _position(fields: Hash, symbol: str, needs_quantity: bool) -> ParsedPosition | NoAdvice:
    raw_side = _text(fields, "side")
    if raw_side is None:
        raise _Bad("side", "is missing")
    side = _SIDES.get(raw_side.upper())
    if side is None:
        raise _Bad("side", f"is not LONG, SHORT or FLAT ({raw_side[:20]!r})")
    if side == "FLAT":
        return NoAdvice("flat", "position side is FLAT")
    quantity = _number(fields, "quantity", required=False)
    if quantity is None:
        quantity = _number(fields, "position_amt", required=False)
    if quantity is not None and quantity == 0.0:
        return NoAdvice("zero_quantity", "position quantity is 0")
    entry = _number(fields, "entry_price", required=True)
    assert entry is not None
    if entry <= 0.0:
        raise _Bad("entry_price", f"must be > 0 ({entry!r})")
    pnl = _number(fields, "unrealized_pnl", required=True)
    assert pnl is not None
    current_sl = _number(fields, "current_sl", required=False)
    if current_sl is None:
        current_sl = _number(fields, "stop_loss", required=False)
    entry_risk = _number(fields, "entry_risk_usdt", required=False)
    if entry_risk is not None and entry_risk <= 0.0:
        raise _Bad("entry_risk_usdt", f"must be > 0 when given ({entry_risk!r})")
    if needs_quantity and quantity is None and entry_risk is None:
        raise _Bad("quantity", "is missing (needed for r_basis=position)")
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
        _number(fields, "ts_epoch", required=False),
    )


def _risk(fields: Hash | None) -> RiskProposal | None:
    if fields is None:
        return None
    stop = _number(fields, "stop_dist_pct", required=False)
    # The locked kernel floors a negative stop's risk unit at 1e-9 (spec vector
    # edge::p1_stop_negative_clamped_1e-9), which makes R_net enormous and proposes the
    # largest partial exit: the service refuses it as corrupt input instead (docs/inputs.md).
    if stop is not None and stop < 0.0:
        raise _Bad("stop_dist_pct", f"is negative ({stop!r})")
    return RiskProposal(
        stop_dist_pct=stop,
        proposed_sl=_lenient(fields, "proposed_sl"),
        proposed_tp=_lenient(fields, "proposed_tp"),
    )


def _synthetic(symbol: str, now: float) -> Position:
    # Explicit opt-in only (POSITION_SOURCE=synthetic): a flat-PnL LONG at 1.0, so the kill
    # score can be watched without positions. Every proposal says position_source=synthetic.
    return Position(symbol=symbol, side="LONG", entry_price=1.0, unrealized_pnl=0.0, age_sec=0.0)


# -- fast paths ---------------------------------------------------------------------------
# msgspec converts a clean hash of numeric strings in one C call (~4x faster than field by
# field). Anything it refuses or that needs a judgement (whitespace, "None", a bad value,
# a zero whose sign would be lost, a range violation) returns None and takes the slow
# path above, which is the reference and names the problem. Both give identical results.


class _MarketWire(msgspec.Struct, gc=False):
    sigma: float
    ts: float
    p_trend: float
    p_mr: float
    p_chop: float
    ts_timestamp: float | None = None


class _PositionWire(msgspec.Struct, gc=False):
    side: str
    entry_price: float
    unrealized_pnl: float
    current_price: float | None = None
    mark_price: float | None = None
    quantity: float | None = None
    position_amt: float | None = None
    ts_epoch: float | None = None
    stop_loss: float | None = None
    take_profit: float | None = None
    created_at: str | None = None
    age_sec: float | None = None
    current_sl: float | None = None
    current_tp: float | None = None
    peak_price: float | None = None
    trough_price: float | None = None
    entry_risk_usdt: float | None = None


_convert = msgspec.convert
_ValidationError = msgspec.ValidationError
_isfinite = math.isfinite


def _opt0(value: float | None) -> float:
    return 0.0 if value is None else value


def _market_fast(fields: Hash) -> ParsedMarket | None:
    try:
        w = _convert(fields, _MarketWire, strict=False)
    except _ValidationError:
        return None
    sigma, ts, a, b, c = w.sigma, w.ts, w.p_trend, w.p_mr, w.p_chop
    if not (sigma and ts and a and b and c) or w.ts_timestamp == 0.0:
        return None  # a zero: msgspec drops the sign of "-0"; let float() decide
    if not _isfinite(sigma + ts + a + b + c + _opt0(w.ts_timestamp)):
        return None
    if sigma < 0.0 or ts < 0.0 or not (0.0 <= a <= 1.0 and 0.0 <= b <= 1.0 and 0.0 <= c <= 1.0):
        return None
    return ParsedMarket(MarketState(sigma, ts, a, b, c), w.ts_timestamp)


def _position_fast(fields: Hash, symbol: str, needs_quantity: bool) -> PositionPart:
    try:
        w = _convert(fields, _PositionWire, strict=False)
    except _ValidationError:
        return None
    side = w.side
    if side not in _SIDES:
        return None
    if side == "FLAT":
        return NoAdvice("flat", "position side is FLAT")
    quantity = w.quantity if w.quantity is not None else w.position_amt
    if quantity is not None and quantity == 0.0:
        return None
    entry, pnl = w.entry_price, w.unrealized_pnl
    price = w.current_price if w.current_price is not None else w.mark_price
    sl = w.current_sl if w.current_sl is not None else w.stop_loss
    tp = w.current_tp if w.current_tp is not None else w.take_profit
    entry_risk = w.entry_risk_usdt
    if entry <= 0.0:
        return None  # the slow path words the error
    if entry_risk is not None and entry_risk <= 0.0:
        return None
    if needs_quantity and quantity is None and entry_risk is None:
        return None
    total = (
        entry
        + pnl
        + _opt0(price)
        + _opt0(quantity)
        + _opt0(w.ts_epoch)
        + _opt0(sl)
        + _opt0(tp)
        + _opt0(w.age_sec)
        + _opt0(w.peak_price)
        + _opt0(w.trough_price)
        + _opt0(entry_risk)
    )
    if not _isfinite(total):
        return None
    # msgspec drops the sign of "-0"; float() keeps it: let the slow path handle zeros
    if 0.0 in (
        pnl, price, quantity, w.ts_epoch, sl, tp, w.age_sec, w.peak_price, w.trough_price,
    ):  # fmt: skip
        return None
    created_at: float | None = None
    if w.age_sec is None and w.created_at is not None:
        try:
            created_at = parse_epoch(w.created_at)
        except _Bad:
            return None
    return ParsedPosition(
        Position(
            symbol=symbol,
            side=side,
            entry_price=entry,
            unrealized_pnl=pnl,
            age_sec=0.0,
            current_price=price,
            peak_price=w.peak_price,
            trough_price=w.trough_price,
            current_sl=sl,
            current_tp=tp,
            quantity=1.0 if quantity is None else quantity,
            entry_risk_usdt=entry_risk,
        ),
        w.age_sec,
        created_at,
        w.ts_epoch,
    )


def parse_position(fields: Hash | None, symbol: str, *, needs_quantity: bool) -> PositionPart:
    """Parse a position hash once (when it changes); None when the key is absent."""
    if fields is None:
        return None
    if OVERSIZED in fields:
        return NoAdvice("invalid_position", fields[OVERSIZED])
    fast = _position_fast(fields, symbol, needs_quantity)
    if fast is not None:
        return fast
    try:
        return _position(fields, symbol, needs_quantity)
    except _Bad as bad:
        return NoAdvice("invalid_position", f"{bad.field} {bad.problem}")


def parse_market(fields: Hash | None) -> MarketPart:
    if fields is None:
        return None
    if OVERSIZED in fields:
        return NoAdvice("invalid_marketstate", fields[OVERSIZED])
    fast = _market_fast(fields)
    if fast is not None:
        return fast
    try:
        return ParsedMarket(_market(fields), _number(fields, "ts_timestamp", required=False))
    except _Bad as bad:
        return NoAdvice("invalid_marketstate", f"{bad.field} {bad.problem}")


def parse_risk(fields: Hash | None) -> RiskPart:
    if fields is not None and OVERSIZED in fields:
        return NoAdvice("invalid_risk", fields[OVERSIZED])
    try:
        return _risk(fields)
    except _Bad as bad:
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


# The input fields the codec reads. The readers (live and replay) keep only these: less
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
# a value the codec rejects in a field it requires, so the symbol is retracted as invalid.
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


def _opt(value: float | None, ndigits: int | None = None) -> str:
    if value is None:
        return ""
    return repr(round(value, ndigits) if ndigits is not None else value)


def iso_utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


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
) -> Hash:
    """The proposal hash (docs/outputs.md): original names and formats plus ours."""
    k = decision.k_components
    pos = ready.position
    mkt = ready.market
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
        "computed_at_utc": iso_utc(now),
        "last_update_epoch": str(int(now)),
        "position_side": pos.side,
        "position_age_sec": repr(pos.age_sec),
        "position_current_price": _opt(pos.current_price),
        "position_entry_price": repr(pos.entry_price),
        "position_unrealized_pnl": repr(pos.unrealized_pnl),
        "symbol": symbol,
        "plan_id": plan_id,
        "ts_epoch": repr(round(now, 6)),
        "trigger": trigger,
        "seq": str(seq),
        "position_source": ready.position_source,
        "risk_source": ready.risk_source,
        "marketstate_age_sec": _opt(ready.marketstate_age_sec, 3),
        "position_snapshot_age_sec": _opt(ready.position_snapshot_age_sec, 3),
        "theta_id": theta_id,
        "schema_version": SCHEMA_VERSION,
    }


PROPOSAL_FIELDS: tuple[str, ...] = (
    "harvest_action", "new_sl_proposed", "R_net", "risk_unit", "cost_est", "kill_score",
    "reason_codes", "k_regime_flip", "k_sigma_spike", "k_ts_drop", "k_age_penalty", "sigma",
    "ts", "p_trend", "p_mr", "p_chop", "computed_at_utc", "last_update_epoch", "position_side",
    "position_age_sec", "position_current_price", "position_entry_price",
    "position_unrealized_pnl", "symbol", "plan_id", "ts_epoch", "trigger", "seq",
    "position_source", "risk_source", "marketstate_age_sec", "position_snapshot_age_sec",
    "theta_id", "schema_version",
)  # fmt: skip
