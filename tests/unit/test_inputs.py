"""Redis hash fields -> kernel inputs (docs/inputs.md) and proposal fields (docs/outputs.md)."""

from __future__ import annotations

import math
import re
from datetime import datetime

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harvest_async.core.engine import Engine, EngineConfig
from harvest_async.core.input_hashes import NoAdvice, Ready, SymbolInputs, parse_epoch
from harvest_async.core.inputs import evaluate
from harvest_async.core.kernel import KernelInputError, compute
from harvest_async.core.models import Decision, KComponents, Theta
from harvest_async.core.ports import PublishOut, RetractOut
from harvest_async.core.proposal import plan_id_for, proposal_fields, theta_id_for

SYM = "BTCUSDT"
NOW = 1_700_000_100.0  # 2023-11-14T22:15:00Z
CREATED = "1700000000"  # 2023-11-14T22:13:20Z: 100 s before NOW

MS = {
    "sigma": "0.01",
    "ts": "0.35",
    "p_trend": "0.5",
    "p_mr": "0.2",
    "p_chop": "0.3",
    "ts_timestamp": "1700000090",
    "mu": "0.0001",
    "dp": "x",
    "vr": "",
    "spike_proxy": "nan",
    "buffer_size": "120",
}
RISK = {"stop_dist_pct": "0.02", "proposed_sl": "98.0", "proposed_tp": "110"}
POS = {
    "side": "LONG",
    "entry_price": "100.0",
    "unrealized_pnl": "5.0",
    "current_price": "105.0",
    "quantity": "1.0",
    "ts_epoch": "1700000095.5",
    "created_at": CREATED,
}

# docs/outputs.md, copied from the contract (not from the code)
ORIGINAL_FIELDS = (
    "harvest_action", "new_sl_proposed", "R_net", "risk_unit", "cost_est", "kill_score",
    "reason_codes", "k_regime_flip", "k_sigma_spike", "k_ts_drop", "k_age_penalty", "sigma",
    "ts", "p_trend", "p_mr", "p_chop", "computed_at_utc", "last_update_epoch",
    "position_side", "position_age_sec", "position_current_price", "position_entry_price",
    "position_unrealized_pnl",
)  # fmt: skip
ADDED_FIELDS = (
    "symbol", "plan_id", "ts_epoch", "trigger", "seq", "position_source", "risk_source",
    "marketstate_age_sec", "position_snapshot_age_sec", "theta_id", "schema_version",
)  # fmt: skip


def edit(base: dict[str, str] | None, **changes: str | None) -> dict[str, str]:
    """A copy of `base` with fields set, or removed when the value is None."""
    out = dict(base or {})
    for name, value in changes.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def run(
    pos: dict[str, str] | None = POS,
    ms: dict[str, str] | None = MS,
    risk: dict[str, str] | None = RISK,
    *,
    now: float = NOW,
    max_age: float = 300.0,
    skew: float = 5.0,
    synthetic: bool = False,
    theta: Theta = Theta(),  # noqa: B008
) -> Ready | NoAdvice:
    return evaluate(
        SymbolInputs(SYM, marketstate=ms, risk=risk, position=pos),
        now,
        theta=theta,
        max_input_age_sec=max_age,
        max_clock_skew_sec=skew,
        synthetic_positions=synthetic,
    )


def ready(**kwargs: object) -> Ready:
    result = run(**kwargs)  # type: ignore[arg-type]
    assert isinstance(result, Ready), result
    return result


def no_advice(**kwargs: object) -> NoAdvice:
    result = run(**kwargs)  # type: ignore[arg-type]
    assert isinstance(result, NoAdvice), result
    return result


# -- field mapping ----------------------------------------------------------------------


def test_valid_hashes_map_to_kernel_inputs() -> None:
    r = ready()
    p, m = r.position, r.market
    assert (p.symbol, p.side, p.entry_price, p.unrealized_pnl) == (SYM, "LONG", 100.0, 5.0)
    assert (p.current_price, p.quantity, p.age_sec) == (105.0, 1.0, 100.0)
    assert p.current_sl is None and p.current_tp is None
    assert (m.sigma, m.ts, m.p_trend, m.p_mr, m.p_chop) == (0.01, 0.35, 0.5, 0.2, 0.3)
    assert r.risk is not None and r.risk.stop_dist_pct == 0.02 and r.risk.proposed_sl == 98.0
    assert r.risk_source == "p1"
    assert r.position_source == "redis_hash"
    assert r.marketstate_age_sec == pytest.approx(10.0)
    assert r.position_snapshot_age_sec == pytest.approx(4.5)
    assert r.stale_at == pytest.approx(1_700_000_090.0 + 300.0)  # the older input


def test_ages_unknown_without_timestamps() -> None:
    r = ready(pos=edit(POS, ts_epoch=None), ms=edit(MS, ts_timestamp=None))
    assert r.marketstate_age_sec is None
    assert r.position_snapshot_age_sec is None
    assert r.stale_at is None


def test_side_is_case_insensitive_and_short_maps() -> None:
    assert ready(pos=edit(POS, side="short")).position.side == "SHORT"
    assert ready(pos=edit(POS, side=" Long ")).position.side == "LONG"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"current_sl": "99.5", "stop_loss": "98.0"}, 99.5),
        ({"stop_loss": "98.0"}, 98.0),
        ({"current_sl": "", "stop_loss": "98.0"}, 98.0),
        ({"current_sl": "None", "stop_loss": "97.0"}, 97.0),
        ({}, None),
    ],
)
def test_current_sl_takes_precedence_over_stop_loss(
    changes: dict[str, str], expected: float | None
) -> None:
    assert ready(pos=edit(POS, **changes)).position.current_sl == expected


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"current_tp": "111", "take_profit": "112"}, 111.0),
        ({"take_profit": "112"}, 112.0),
        ({}, None),
    ],
)
def test_current_tp_takes_precedence_over_take_profit(
    changes: dict[str, str], expected: float | None
) -> None:
    assert ready(pos=edit(POS, **changes)).position.current_tp == expected


@pytest.mark.parametrize(
    ("created_at", "age"),
    [
        pytest.param("1700000000", 100.0, id="epoch-s"),
        pytest.param("1700000000.5", 99.5, id="epoch-s-fraction"),
        pytest.param("1700000000000", 100.0, id="epoch-ms"),
        pytest.param("1700000000500", 99.5, id="epoch-ms-fraction"),
        pytest.param("2023-11-14T22:13:20Z", 100.0, id="iso-z"),
        pytest.param("2023-11-14T22:13:20.500Z", 99.5, id="iso-z-fraction"),
        pytest.param("2023-11-14T22:13:20+00:00", 100.0, id="iso-utc-offset"),
        pytest.param("2023-11-14T23:13:20+01:00", 100.0, id="iso-plus-offset"),
        pytest.param("2023-11-14T17:13:20-05:00", 100.0, id="iso-minus-offset"),
        pytest.param("2023-11-14T22:13:20", 100.0, id="iso-naive-is-utc"),
        pytest.param("2023-11-14 22:13:20", 100.0, id="iso-space"),
    ],
)
def test_age_from_created_at(created_at: str, age: float) -> None:
    pos = edit(POS, created_at=created_at)
    assert ready(pos=pos).position.age_sec == pytest.approx(age)


def test_age_advances_with_now() -> None:
    assert ready(now=NOW + 60).position.age_sec == pytest.approx(160.0)


def test_age_sec_takes_precedence_over_created_at() -> None:
    assert ready(pos=edit(POS, age_sec="42")).position.age_sec == 42.0
    assert ready(pos=edit(POS, age_sec="42"), now=NOW + 60).position.age_sec == 42.0


def test_age_is_zero_without_age_sec_or_created_at() -> None:
    assert ready(pos=edit(POS, created_at=None)).position.age_sec == 0.0


@pytest.mark.parametrize(
    ("raw", "epoch"),
    [
        ("1700000000", 1_700_000_000.0),
        ("1700000000000", 1_700_000_000.0),
        ("2023-11-14T22:13:20Z", 1_700_000_000.0),
        ("2023-11-14T22:13:20+00:00", 1_700_000_000.0),
        ("2023-11-14T22:13:20", 1_700_000_000.0),
    ],
)
def test_parse_epoch(raw: str, epoch: float) -> None:
    assert parse_epoch(raw) == pytest.approx(epoch)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"current_price": "105", "mark_price": "106"}, 105.0),
        ({"current_price": None, "mark_price": "106"}, 106.0),
        ({"current_price": "", "mark_price": "106"}, 106.0),
        ({"current_price": None}, None),
    ],
)
def test_current_price_takes_precedence_over_mark_price(
    changes: dict[str, str | None], expected: float | None
) -> None:
    assert ready(pos=edit(POS, **changes)).position.current_price == expected


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"quantity": "2", "position_amt": "3"}, 2.0),
        ({"quantity": None, "position_amt": "-3"}, -3.0),
        ({"quantity": "", "position_amt": "0.5"}, 0.5),
        ({"quantity": None}, 1.0),
    ],
)
def test_quantity_takes_precedence_over_position_amt(
    changes: dict[str, str | None], expected: float
) -> None:
    assert ready(pos=edit(POS, **changes)).position.quantity == expected


# -- no position ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pos", "reason"),
    [
        pytest.param(None, "no_position", id="absent"),
        pytest.param(edit(POS, side="FLAT"), "flat", id="flat"),
        pytest.param(edit(POS, side="flat"), "flat", id="flat-lowercase"),
        pytest.param(edit(POS, side="FLAT", entry_price="0"), "flat", id="flat-with-junk"),
        pytest.param(edit(POS, quantity="0"), "zero_quantity", id="quantity-0"),
        pytest.param(edit(POS, quantity="0.0"), "zero_quantity", id="quantity-0.0"),
        pytest.param(edit(POS, quantity="-0"), "zero_quantity", id="quantity-minus-0"),
        pytest.param(
            edit(POS, quantity=None, position_amt="0"), "zero_quantity", id="position-amt-0"
        ),
        pytest.param(
            edit(POS, quantity="0", position_amt="5"), "zero_quantity", id="quantity-wins"
        ),
    ],
)
def test_no_position(pos: dict[str, str] | None, reason: str) -> None:
    result = no_advice(pos=pos)
    assert result.reason == reason
    assert not result.invalid


# -- bad input (docs/inputs.md) ---------------------------------------------------------

MARKET_REQUIRED = ("sigma", "ts", "p_trend", "p_mr", "p_chop")
POSITION_REQUIRED = ("side", "entry_price", "unrealized_pnl")
NOT_NUMBERS = ("abc", "1.2.3", "0x10", "12abc", "--1")
NOT_FINITE = ("nan", "NaN", "-nan", "inf", "-inf", "Infinity", "-Infinity", "1e999")
POSITION_NUMBERS = (
    "entry_price",
    "unrealized_pnl",
    "quantity",
    "current_sl",
    "stop_loss",
    "age_sec",
    "ts_epoch",
    "entry_risk_usdt",
)


def _bad_cases() -> list[object]:
    cases: list[object] = []

    def add(kind: str, field: str, value: str | None, reason: str, label: str) -> None:
        cases.append(pytest.param(kind, field, value, reason, id=f"{kind}-{field}-{label}"))

    for field in MARKET_REQUIRED:
        add("ms", field, None, "invalid_marketstate", "missing")
        add("ms", field, "", "invalid_marketstate", "empty")
        add("ms", field, "None", "invalid_marketstate", "None")
        for i, text in enumerate(NOT_NUMBERS):
            add("ms", field, text, "invalid_marketstate", f"nan-text{i}")
        for text in NOT_FINITE:
            add("ms", field, text, "invalid_marketstate", text)
    add("ms", "ts_timestamp", "abc", "invalid_marketstate", "text")
    add("ms", "ts_timestamp", "nan", "invalid_marketstate", "nan")
    for field in ("p_trend", "p_mr", "p_chop"):
        for value in ("1.0000001", "1.5", "-0.1", "-1e-9", "2"):
            add("ms", field, value, "invalid_marketstate", f"out-of-range-{value}")
    for value in ("-0.01", "-1e-12", "-5"):
        add("ms", "sigma", value, "invalid_marketstate", f"negative-{value}")
    for value in ("-1.0", "-1e-12", "-0.2"):
        add("ms", "ts", value, "invalid_marketstate", f"negative-{value}")

    for field in POSITION_REQUIRED:
        add("pos", field, None, "invalid_position", "missing")
        add("pos", field, "", "invalid_position", "empty")
    for field in POSITION_NUMBERS:
        for i, text in enumerate(NOT_NUMBERS[:2]):
            add("pos", field, text, "invalid_position", f"nan-text{i}")
        for text in ("nan", "inf", "-inf"):
            add("pos", field, text, "invalid_position", text)
    for value in ("0", "0.0", "-0", "-1", "-100.5"):
        add("pos", "entry_price", value, "invalid_position", f"not-positive-{value}")
    for value in ("BOTH", "BUY", "SELL", "long-ish", "1", "L"):
        add("pos", "side", value, "invalid_position", f"unknown-{value}")
    add("pos", "created_at", "yesterday", "invalid_position", "text")
    add("pos", "created_at", "nan", "invalid_position", "nan")
    add("pos", "created_at", "2023-13-45T00:00:00Z", "invalid_position", "bad-date")

    for i, text in enumerate(NOT_NUMBERS[:2]):
        add("risk", "stop_dist_pct", text, "invalid_risk", f"nan-text{i}")
    for text in ("nan", "inf", "-inf"):
        add("risk", "stop_dist_pct", text, "invalid_risk", text)
    for value in ("-0.02", "-1e-12", "-5"):
        add("risk", "stop_dist_pct", value, "invalid_risk", f"negative-{value}")
    return cases


@pytest.mark.parametrize(("kind", "field", "value", "reason"), _bad_cases())
def test_bad_input_gives_invalid_reason_naming_the_field(
    kind: str, field: str, value: str | None, reason: str
) -> None:
    hashes = {"ms": MS, "pos": POS, "risk": RISK}
    hashes[kind] = edit(hashes[kind], **{field: value})
    result = no_advice(pos=hashes["pos"], ms=hashes["ms"], risk=hashes["risk"])
    assert result.reason == reason
    assert result.invalid
    assert field in result.detail
    assert result.text().startswith(f"{reason}: ")


def test_quantity_fallback_field_is_named_when_bad() -> None:
    result = no_advice(pos=edit(POS, quantity=None, position_amt="abc"))
    assert result.reason == "invalid_position"
    assert "position_amt" in result.detail


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"p_trend": "0", "p_mr": "1", "p_chop": "1.0"}, "p"), ({"sigma": "0"}, "sigma")],
)
def test_boundary_values_are_valid(changes: dict[str, str], field: str) -> None:
    ready(ms=edit(MS, **changes))


@pytest.mark.parametrize("field", ["current_price", "mark_price", "peak_price", "take_profit"])
def test_fields_without_influence_are_lenient(field: str) -> None:
    ready(pos=edit(POS, **{field: "garbage"}))
    ready(pos=edit(POS, **{field: "nan"}))


def test_missing_marketstate_is_no_advice() -> None:
    assert no_advice(ms=None).reason == "missing_marketstate"


def test_numbers_tolerate_surrounding_whitespace() -> None:
    assert ready(pos=edit(POS, entry_price=" 100.0 ")).position.entry_price == 100.0


# -- staleness --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ms_ts", "pos_ts", "reason"),
    [
        (str(int(NOW) - 301), str(NOW), "stale_marketstate"),
        (str(int(NOW) - 3600), str(NOW), "stale_marketstate"),
        (str(int(NOW)), str(NOW - 300.5), "stale_position"),
        (str(int(NOW)), str(NOW - 86400), "stale_position"),
    ],
)
def test_stale_inputs(ms_ts: str, pos_ts: str, reason: str) -> None:
    result = no_advice(ms=edit(MS, ts_timestamp=ms_ts), pos=edit(POS, ts_epoch=pos_ts))
    assert result.reason == reason
    assert not result.invalid


def test_inputs_exactly_at_max_age_are_fresh() -> None:
    r = ready(ms=edit(MS, ts_timestamp=str(int(NOW) - 300)), pos=edit(POS, ts_epoch=str(NOW - 300)))
    assert r.stale_at == NOW


def test_max_input_age_is_configurable() -> None:
    # the snapshot is 4.5 s old, the market state 10 s
    assert no_advice(max_age=4.0).reason == "stale_position"
    assert no_advice(max_age=5.0).reason == "stale_marketstate"
    assert ready(max_age=30.0).stale_at == pytest.approx(1_700_000_090.0 + 30.0)


# -- trend strength range (D8) ----------------------------------------------------------


def test_negative_trend_strength_is_invalid_input() -> None:
    # the kernel alone caps it into ts_drop 0.5 (edge::ts_negative_cap); the service refuses
    result = no_advice(ms=edit(MS, ts="-1.0"))
    assert result.text() == "invalid_marketstate: ts is negative (-1.0)"


def test_negative_stop_distance_is_invalid_input() -> None:
    # the kernel alone floors its risk unit at 1e-9 (edge::p1_stop_negative_clamped_1e-9)
    result = no_advice(risk=edit(RISK, stop_dist_pct="-0.02"))
    assert result.text() == "invalid_risk: stop_dist_pct is negative (-0.02)"
    assert ready(risk=edit(RISK, stop_dist_pct="-0")).risk_source == "fallback"


@pytest.mark.parametrize("value", ["0", "-0", "0.0", "0.3", "1", "7.5", "1e6"])
def test_trend_strength_has_no_upper_bound(value: str) -> None:
    assert ready(ms=edit(MS, ts=value)).market.ts == abs(float(value))


# -- time fields ahead of the clock (D5) -------------------------------------------------

DAY = 86400.0


@pytest.mark.parametrize(
    ("kind", "field", "stamp", "ahead"),
    [
        pytest.param("marketstate", "ts_timestamp", str(int(NOW + DAY)), 86400, id="ms-day"),
        pytest.param("marketstate", "ts_timestamp", repr(NOW + 5.5), 6, id="ms-just-over"),
        pytest.param("position", "ts_epoch", repr(NOW + DAY), 86400, id="snapshot-day"),
        pytest.param("position", "ts_epoch", repr(NOW + 60), 60, id="snapshot-minute"),
        pytest.param("position", "created_at", str(int(NOW + DAY)), 86400, id="created-epoch"),
        pytest.param("position", "created_at", str(int(NOW + DAY) * 1000), 86400, id="created-ms"),
        pytest.param("position", "created_at", "2023-11-15T22:15:00Z", 86400, id="created-iso"),
    ],
)
def test_time_field_ahead_of_the_tolerance_is_invalid(
    kind: str, field: str, stamp: str, ahead: int
) -> None:
    changes = {field: stamp}
    result = (
        no_advice(ms=edit(MS, **changes))
        if kind == "marketstate"
        else no_advice(pos=edit(POS, **changes))
    )
    assert result.invalid
    assert result.text() == (
        f"invalid_{kind}: {field} is {ahead} s in the future (more than MAX_CLOCK_SKEW_SEC=5)"
    )
    # valid again (with age 0) once the stamp is within the tolerance: the engine re-checks
    assert result.recheck_at == pytest.approx(float(parse_epoch(stamp)) - 5.0)
    assert result.recheck_at is not None
    later = run(
        ms=edit(MS, **changes) if kind == "marketstate" else MS,
        pos=edit(POS, **changes) if kind == "position" else POS,
        now=result.recheck_at,
        max_age=DAY + 600,
    )
    assert isinstance(later, Ready), later


def test_time_fields_within_the_tolerance_give_age_zero() -> None:
    r = ready(
        ms=edit(MS, ts_timestamp=repr(NOW + 3.0)),
        pos=edit(POS, ts_epoch=repr(NOW + 5.0), created_at=repr(NOW + 4.5)),
    )
    assert r.marketstate_age_sec == 0.0
    assert r.position_snapshot_age_sec == 0.0
    assert r.position.age_sec == 0.0
    assert r.stale_at == pytest.approx(NOW + 3.0 + 300.0)  # staleness counts from the stamp
    fields = fields_for(r)
    assert fields["marketstate_age_sec"] == "0.0"
    assert fields["position_snapshot_age_sec"] == "0.0"
    assert fields["position_age_sec"] == "0.0"


def test_future_created_at_is_ignored_when_age_sec_is_given() -> None:
    assert ready(pos=edit(POS, age_sec="42", created_at=repr(NOW + DAY))).position.age_sec == 42.0


def test_clock_skew_tolerance_is_configurable() -> None:
    ahead = edit(MS, ts_timestamp=repr(NOW + 1.0))
    assert ready(ms=ahead, skew=1.0).marketstate_age_sec == 0.0
    result = no_advice(ms=ahead, skew=0.0)
    assert result.detail == "ts_timestamp is 1 s in the future (more than MAX_CLOCK_SKEW_SEC=0)"
    assert result.recheck_at == NOW + 1.0


def test_position_reasons_come_before_market_ones_for_future_stamps() -> None:
    result = no_advice(
        ms=edit(MS, ts_timestamp=repr(NOW + DAY)), pos=edit(POS, ts_epoch=repr(NOW + DAY))
    )
    assert result.reason == "invalid_position"
    assert result.detail.startswith("ts_epoch ")


# -- risk source ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("risk", "source"),
    [
        pytest.param(RISK, "p1", id="p1"),
        pytest.param(None, "fallback", id="absent"),
        pytest.param(edit(RISK, stop_dist_pct="0"), "fallback", id="zero"),
        pytest.param(edit(RISK, stop_dist_pct="0.0"), "fallback", id="zero-float"),
        pytest.param(edit(RISK, stop_dist_pct=None), "fallback", id="no-stop"),
        pytest.param(edit(RISK, stop_dist_pct=""), "fallback", id="empty-stop"),
        pytest.param({}, "fallback", id="empty-hash"),
        pytest.param({"stop_dist_pct": "0.015"}, "p1", id="stop-only"),
    ],
)
def test_risk_source(risk: dict[str, str] | None, source: str) -> None:
    assert ready(risk=risk).risk_source == source


def test_fallback_stop_is_what_the_kernel_uses() -> None:
    theta = Theta(fallback_stop_pct=0.05)
    r = ready(risk=None, theta=theta)
    assert compute(r.position, r.market, r.risk, theta).risk_unit == pytest.approx(5.0)


# -- synthetic positions ----------------------------------------------------------------


def test_synthetic_positions_only_when_enabled() -> None:
    assert no_advice(pos=None).reason == "no_position"
    r = ready(pos=None, synthetic=True)
    assert r.position_source == "synthetic"
    assert r.position.symbol == SYM
    assert ready(synthetic=True).position_source == "synthetic"
    assert ready().position_source == "redis_hash"


# -- proposal fields --------------------------------------------------------------------


def fields_for(r: Ready, *, trigger: str = "change", seq: int = 7) -> dict[str, str]:
    decision = compute(r.position, r.market, r.risk, Theta())
    theta_id = theta_id_for(Theta())
    return proposal_fields(
        SYM,
        r,
        decision,
        now=NOW,
        plan_id=plan_id_for(SYM, decision, theta_id),
        seq=seq,
        trigger=trigger,
        theta_id=theta_id,
    )


def test_proposal_fields_cover_the_contract() -> None:
    fields = fields_for(ready())
    missing = set(ORIGINAL_FIELDS + ADDED_FIELDS) - set(fields)
    assert not missing
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())


def test_proposal_field_formats() -> None:
    r = ready(pos=edit(POS, unrealized_pnl="9.0"))  # R = 4.45: PARTIAL_50 + profit lock
    fields = fields_for(r, trigger="heartbeat", seq=12)
    decision = compute(r.position, r.market, r.risk, Theta())
    assert fields["harvest_action"] == "PARTIAL_50"
    assert decision.new_sl_proposed is not None
    assert fields["new_sl_proposed"] == repr(decision.new_sl_proposed)
    assert float(fields["new_sl_proposed"]) == decision.new_sl_proposed
    assert fields["R_net"] == repr(decision.R_net)
    assert fields["kill_score"] == repr(decision.kill_score)
    assert fields["reason_codes"] == "harvest_partial_50,profit_lock"
    assert fields["schema_version"] == "2"
    assert fields["symbol"] == SYM
    assert fields["trigger"] == "heartbeat"
    assert fields["seq"] == "12"
    assert re.fullmatch(r"[0-9a-f]{16}", fields["plan_id"])
    assert fields["theta_id"] == theta_id_for(Theta())
    assert fields["last_update_epoch"] == str(int(NOW))
    assert float(fields["ts_epoch"]) == NOW
    moment = datetime.fromisoformat(fields["computed_at_utc"])
    offset = moment.utcoffset()
    assert offset is not None and offset.total_seconds() == 0
    assert moment.timestamp() == NOW
    assert fields["position_side"] == "LONG"
    assert float(fields["position_age_sec"]) == pytest.approx(100.0)
    assert float(fields["position_current_price"]) == 105.0
    assert float(fields["position_entry_price"]) == 100.0
    assert float(fields["position_unrealized_pnl"]) == 9.0
    assert fields["position_source"] == "redis_hash"
    assert fields["risk_source"] == "p1"
    assert float(fields["marketstate_age_sec"]) == pytest.approx(10.0)
    assert float(fields["position_snapshot_age_sec"]) == pytest.approx(4.5)
    for name in ("sigma", "ts", "p_trend", "p_mr", "p_chop"):
        assert float(fields[name]) == float(MS[name])
    for name in ("k_regime_flip", "k_sigma_spike", "k_ts_drop", "k_age_penalty"):
        assert math.isfinite(float(fields[name]))


def test_no_sl_is_the_literal_none_and_unknown_ages_are_empty() -> None:
    r = ready(
        pos=edit(POS, unrealized_pnl="1.0", ts_epoch=None, current_price=None),
        ms=edit(MS, ts_timestamp=None),
        risk=None,
    )
    fields = fields_for(r)
    assert fields["new_sl_proposed"] == "None"
    assert fields["harvest_action"] == "NONE"
    assert fields["reason_codes"] == ""
    assert fields["marketstate_age_sec"] == ""
    assert fields["position_snapshot_age_sec"] == ""
    assert fields["position_current_price"] == ""
    assert fields["risk_source"] == "fallback"


def dec(
    action: str = "PARTIAL_25", sl: float | None = 100.2, k: float = 0.5, r: float = 2.45
) -> Decision:
    return Decision(
        harvest_action=action,  # type: ignore[arg-type]
        new_sl_proposed=sl,
        R_net=r,
        risk_unit=2.0,
        cost_est=0.1,
        kill_score=k,
        reason_codes=("harvest_partial_25", "profit_lock"),
        k_components=KComponents(0.0, 0.0, 0.0, 0.0),
        tranche_weights=(1 / 3, 1 / 3, 1 / 3),
    )


def test_plan_id_identifies_the_decision() -> None:
    tid = theta_id_for(Theta())
    base = plan_id_for(SYM, dec(), tid)
    assert re.fullmatch(r"[0-9a-f]{16}", base)
    assert plan_id_for(SYM, dec(), tid) == base
    # R_net, risk unit and reason codes do not identify a decision
    assert plan_id_for(SYM, dec(r=2.46), tid) == base
    others = {
        plan_id_for(SYM, dec(action="PARTIAL_50"), tid),
        plan_id_for(SYM, dec(sl=100.3), tid),
        plan_id_for(SYM, dec(sl=None), tid),
        plan_id_for(SYM, dec(k=0.51), tid),
        plan_id_for("ETHUSDT", dec(), tid),
        plan_id_for(SYM, dec(), theta_id_for(Theta(T1_R=2.5))),
    }
    assert base not in others
    assert len(others) == 6
    # K on the CHANGE_EPS grid: clock jitter in the age term does not make a new plan
    assert plan_id_for(SYM, dec(k=0.5 + 1e-7), tid) == plan_id_for(SYM, dec(k=0.5), tid)
    assert plan_id_for(SYM, dec(k=0.5 + 1e-7), tid, 0.0) != plan_id_for(SYM, dec(k=0.5), tid, 0.0)


def test_theta_id_depends_on_tunables() -> None:
    assert theta_id_for(Theta()) == theta_id_for(Theta())
    assert theta_id_for(Theta()) != theta_id_for(Theta(kill_threshold=0.7))


# -- fuzz -------------------------------------------------------------------------------

MS_NAMES = [*MARKET_REQUIRED, "ts_timestamp", "mu", "dp", "vr", "spike_proxy", "buffer_size"]
RISK_NAMES = ["stop_dist_pct", "proposed_sl", "proposed_tp"]
POS_NAMES = [
    "side",
    "entry_price",
    "unrealized_pnl",
    "current_price",
    "mark_price",
    "quantity",
    "position_amt",
    "ts_epoch",
    "stop_loss",
    "take_profit",
    "created_at",
    "age_sec",
    "current_sl",
    "current_tp",
    "peak_price",
    "trough_price",
    "entry_risk_usdt",
]
SPECIAL = [
    "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "-0", "0", "0.0", "", " ", "None", "null",
    "1e308", "-1e308", "1.7976931348623157e308", "-1.7976931348623157e308", "5e-324", "1e-300",
    "1e999", "LONG", "SHORT", "FLAT", "long", "short", "2023-11-14T22:13:20Z",
    "2023-11-14T23:13:20+01:00", "0001-01-01T00:00:00", "9999-12-31T23:59:59-01:00",
    "1700000000000", "1700000000", "0.5", "1", "1_000", "١٢٣", " 0.3 ", "1e-9", "-1",
]  # fmt: skip

values = st.one_of(
    st.sampled_from(SPECIAL),
    st.text(max_size=12),
    st.floats().map(repr),
    st.floats(-1e3, 1e3).map(str),
    st.floats(0.0, 1.0).map(str),
    st.integers(-(10**20), 10**20).map(str),
    st.floats(NOW - 1000, NOW + 1000).map(repr),
)


def hashes(names: list[str], valid: dict[str, str]) -> st.SearchStrategy[dict[str, str] | None]:
    keys = st.one_of(st.sampled_from(names), st.text(max_size=8))
    mutated = st.builds(
        lambda drop, extra: {k: v for k, v in {**valid, **extra}.items() if k not in drop},
        st.sets(st.sampled_from(names), max_size=2),
        st.dictionaries(keys, values, max_size=3),
    )
    anything = st.dictionaries(keys, values, max_size=len(names) + 3)
    # mostly a valid hash with a few fields changed, so that many examples reach the kernel
    return st.one_of(st.none(), st.just(valid), mutated, mutated, mutated, anything)


def _finite(d: Decision) -> bool:
    numbers = [d.R_net, d.risk_unit, d.cost_est, d.kill_score, *d.tranche_weights]
    numbers += list(msgspec.structs.astuple(d.k_components))
    if d.new_sl_proposed is not None:
        numbers.append(d.new_sl_proposed)
    return all(math.isfinite(x) for x in numbers)


@settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    ms=hashes(MS_NAMES, MS),
    risk=hashes(RISK_NAMES, RISK),
    pos=hashes(POS_NAMES, POS),
    synthetic=st.booleans(),
    theta=st.sampled_from([Theta(), Theta(r_basis="position")]),
    dt=st.floats(-10.0, 1000.0),
)
def test_fuzz_never_crashes_and_never_publishes_bad_input(
    *,
    ms: dict[str, str] | None,
    risk: dict[str, str] | None,
    pos: dict[str, str] | None,
    synthetic: bool,
    theta: Theta,
    dt: float,
) -> None:
    inputs = SymbolInputs(SYM, marketstate=ms, risk=risk, position=pos)
    now = NOW + dt
    result = evaluate(
        inputs, now, theta=theta, max_input_age_sec=300.0, synthetic_positions=synthetic
    )
    assert isinstance(result, Ready | NoAdvice)
    refused = isinstance(result, NoAdvice)
    if isinstance(result, NoAdvice):
        assert result.reason
    else:
        try:
            decision = compute(result.position, result.market, result.risk, theta)
        except KernelInputError:
            refused = True
        else:
            assert _finite(decision), (result, decision)

    # the engine: a symbol with a live proposal gets it retracted, never a new publish
    engine = Engine(
        EngineConfig(theta=theta, synthetic_positions=synthetic, max_input_age_sec=300.0)
    )
    # (the first publish, 20 s before NOW, from hashes without stamps: MS and POS are
    # stamped a few seconds before NOW, which is more than the clock skew ahead of then)
    undated_ms, undated_pos = edit(MS, ts_timestamp=None), edit(POS, ts_epoch=None, created_at=None)
    engine.observe(SymbolInputs(SYM, marketstate=undated_ms, risk=RISK, position=undated_pos))
    first = engine.evaluate(SYM, NOW - 20.0)
    assert isinstance(first, PublishOut)
    engine.confirm([first])
    engine.observe(inputs)
    out = engine.evaluate(SYM, now)
    if refused:
        assert isinstance(out, RetractOut), out
        assert not out.reason.startswith("internal_error")
    elif out is not None:
        assert not (isinstance(out, RetractOut) and out.reason.startswith("internal_error"))
        if isinstance(out, PublishOut):
            assert all(isinstance(v, str) for v in out.fields.values())


@pytest.mark.parametrize(
    ("pos", "risk"),
    [
        pytest.param({}, {"stop_dist_pct": "1e307"}, id="risk_unit-inf"),
        pytest.param({"entry_price": "1e-300", "unrealized_pnl": "1e300"}, RISK, id="R_net-inf"),
        pytest.param(
            {"entry_price": "1.797e308", "unrealized_pnl": "1.7e308"}, None, id="new_sl-inf"
        ),
        pytest.param(
            {"entry_price": "1.79e308", "unrealized_pnl": "-1.797e308"},
            {"stop_dist_pct": "10"},
            id="R_net-nan",
        ),
    ],
)
def test_kernel_output_is_finite_for_extreme_inputs(
    pos: dict[str, str], risk: dict[str, str] | None
) -> None:
    """Finite but extreme inputs whose intermediate results overflow: codec + kernel either
    refuse them (NoAdvice / KernelInputError) or give finite outputs, never inf/NaN (a NaN
    R_net would even pass the profit-lock gate)."""
    result = run(pos=edit(POS, **pos), risk=risk)
    if isinstance(result, NoAdvice):
        return
    try:
        decision = compute(result.position, result.market, result.risk, Theta())
    except KernelInputError:
        return
    assert _finite(decision), decision
