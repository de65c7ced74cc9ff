"""The msgspec fast parsers must agree exactly with the field-by-field reference parsers."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from harvest_async.core import parse_fast, parse_reference
from harvest_async.core.input_hashes import InputProblem, NoAdvice, ParsedMarket, ParsedPosition
from harvest_async.core.inputs import parse_market, parse_position

NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(["0", "-0", "0.0", "-0.0", " 1.5", "1_000", "1e400", "nan", "inf", "", "None"]),
    st.sampled_from(
        ["0.5", "0.01", "100.0", "-3.25", "2026-11-26T08:00:00Z", "junk", "1767225600"]
    ),
)
POSITION_FIELDS = [
    "side", "entry_price", "unrealized_pnl", "current_price", "mark_price", "quantity",
    "position_amt", "ts_epoch", "stop_loss", "take_profit", "created_at", "age_sec",
    "current_sl", "current_tp", "peak_price", "trough_price", "entry_risk_usdt",
]  # fmt: skip
MARKET_FIELDS = ["sigma", "ts", "p_trend", "p_mr", "p_chop", "ts_timestamp"]
SIDES = st.sampled_from(["LONG", "SHORT", "FLAT", "long", " SHORT", "", "BUY"])


def _same(a: object, b: object) -> bool:
    """Equal, with floats compared bit for bit (sign of zero and NaN included)."""
    if isinstance(a, float) and isinstance(b, float):
        return repr(a) == repr(b)
    if isinstance(a, ParsedPosition | ParsedMarket) and type(a) is type(b):
        return all(_same(getattr(a, f), getattr(b, f)) for f in a.__struct_fields__)
    if hasattr(a, "__struct_fields__") and type(a) is type(b):
        return all(_same(getattr(a, f), getattr(b, f)) for f in a.__struct_fields__)
    return a == b


def _slow_position(fields: dict[str, str], needs_quantity: bool) -> object:
    try:
        return parse_reference.position(fields, "SYM", needs_quantity)
    except InputProblem as bad:
        return NoAdvice("invalid_position", f"{bad.field} {bad.problem}")


def _slow_market(fields: dict[str, str]) -> object:
    try:
        return ParsedMarket(
            parse_reference.market(fields),
            parse_reference.number(fields, "ts_timestamp", required=False),
        )
    except InputProblem as bad:
        return NoAdvice("invalid_marketstate", f"{bad.field} {bad.problem}")


@settings(max_examples=600, deadline=None)
@given(
    side=SIDES,
    values=st.dictionaries(st.sampled_from(POSITION_FIELDS[1:]), NUMBERS, max_size=16),
    base=st.booleans(),
    needs_quantity=st.booleans(),
)
def test_position_fast_path_matches_slow(
    side: str, values: dict[str, str], base: bool, needs_quantity: bool
) -> None:
    fields = {"entry_price": "100.5", "unrealized_pnl": "3.5"} if base else {}
    fields.update(values)
    fields["side"] = side
    got = parse_position(fields, "SYM", needs_quantity=needs_quantity)
    assert _same(got, _slow_position(fields, needs_quantity))


@settings(max_examples=600, deadline=None)
@given(
    values=st.dictionaries(st.sampled_from(MARKET_FIELDS), NUMBERS, max_size=6), base=st.booleans()
)
def test_market_fast_path_matches_slow(values: dict[str, str], base: bool) -> None:
    fields = (
        {"sigma": "0.01", "ts": "0.35", "p_trend": "0.5", "p_mr": "0.2", "p_chop": "0.3"}
        if base
        else {}
    )
    fields.update(values)
    assert _same(parse_market(fields), _slow_market(fields))


def test_fast_path_is_taken_for_clean_input() -> None:
    market = parse_fast.market(
        {"sigma": "0.01", "ts": "0.35", "p_trend": "0.5", "p_mr": "0.2", "p_chop": "0.3"}
    )
    assert market is not None and math.isclose(market.market.sigma, 0.01)
    position = parse_fast.position(
        {"side": "LONG", "entry_price": "100", "unrealized_pnl": "2", "quantity": "0.5"},
        "SYM",
        False,
    )
    assert isinstance(position, ParsedPosition) and position.position.quantity == 0.5
