"""`compute` (the default) agrees with the service: the same validation (the codec), the
same reason texts, the kernel behind it; `compute --raw` is the locked kernel alone.

The real-server counterpart (the service's retraction reasons read back from the audit
stream): tests/integration/test_compute_service_agreement.py."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from harvest_async.core.input_hashes import NoAdvice, SymbolInputs, trim
from harvest_async.core.inputs import evaluate
from harvest_async.core.models import Theta
from harvest_async.tools import compute as whatif

DATA = Path(__file__).resolve().parents[1] / "data" / "kernel_vectors_public.json"
VECTORS: list[dict[str, Any]] = json.loads(DATA.read_bytes())
NOW = 1_700_000_000.0
CHECKS = whatif.ServiceChecks(now=NOW)

BASE: dict[str, Any] = {
    "name": "base",
    "position": {
        "symbol": "BTCUSDT",
        "side": "LONG",
        "entry_price": 100.0,
        "unrealized_pnl": 5.0,
        "age_sec": 3600.0,
        "current_sl": 99.0,
    },
    "market_state": {"sigma": 0.01, "ts": 0.35, "p_trend": 0.5, "p_mr": 0.2, "p_chop": 0.3},
    "p1_proposal": {"stop_dist_pct": 0.02},
}


def case_with(section: str, field: str, value: Any) -> dict[str, Any]:
    """BASE with one field changed (`...` removes it)."""
    case = json.loads(json.dumps(BASE))
    if value is ...:
        del case[section][field]
    else:
        case[section][field] = value
    if field == "created_at":
        del case["position"]["age_sec"]  # created_at is read only without age_sec
    return case


def run(cases: list[dict[str, Any]], checks: whatif.ServiceChecks | None = CHECKS) -> list[Any]:
    out = io.BytesIO()
    data = b"".join(msgspec.json.encode(c) + b"\n" for c in cases)
    whatif.run_compute(io.BytesIO(data), out, checks=checks)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def as_hash(obj: dict[str, Any] | None) -> dict[str, str] | None:
    """What a producer writes into Redis for these values (null: the field is absent)."""
    if obj is None:
        return None
    return {
        k: v if isinstance(v, str) else repr(v) if isinstance(v, float) else str(v)
        for k, v in obj.items()
        if v is not None
    }


def service_reason(case: dict[str, Any]) -> str | None:
    """The retraction reason the service's codec gives for the same three hashes."""
    inputs = SymbolInputs(
        case["position"].get("symbol", ""),
        trim("marketstate", as_hash(case["market_state"]) or {}),
        None if case["p1_proposal"] is None else trim("risk", as_hash(case["p1_proposal"]) or {}),
        trim("position", as_hash(case["position"]) or {}),
    )
    result = evaluate(inputs, NOW, theta=Theta(), max_input_age_sec=300.0)
    return result.text() if isinstance(result, NoAdvice) else None


# Every class of bad input in docs/inputs.md (and issue 10's examples), with the service's text.
CLASSES = [
    ("missing field", "market_state", "sigma", ..., "invalid_marketstate: sigma is missing"),
    (
        "not a number",
        "position",
        "unrealized_pnl",
        "abc",
        "invalid_position: unrealized_pnl is not a number ('abc')",
    ),
    ("nan", "market_state", "sigma", "nan", "invalid_marketstate: sigma is not finite ('nan')"),
    (
        "inf",
        "position",
        "entry_price",
        "inf",
        "invalid_position: entry_price is not finite ('inf')",
    ),
    (
        "probability above 1",
        "market_state",
        "p_trend",
        1.5,
        "invalid_marketstate: p_trend is outside [0, 1] (1.5)",
    ),
    (
        "probability below 0",
        "market_state",
        "p_chop",
        -0.1,
        "invalid_marketstate: p_chop is outside [0, 1] (-0.1)",
    ),
    (
        "negative sigma",
        "market_state",
        "sigma",
        -1,
        "invalid_marketstate: sigma is negative (-1.0)",
    ),
    ("negative ts", "market_state", "ts", -1.0, "invalid_marketstate: ts is negative (-1.0)"),
    (
        "entry price 0",
        "position",
        "entry_price",
        0,
        "invalid_position: entry_price must be > 0 (0.0)",
    ),
    (
        "negative entry price",
        "position",
        "entry_price",
        -5.0,
        "invalid_position: entry_price must be > 0 (-5.0)",
    ),
    (
        "unknown side",
        "position",
        "side",
        "BUY",
        "invalid_position: side is not LONG, SHORT or FLAT ('BUY')",
    ),
    ("missing side", "position", "side", ..., "invalid_position: side is missing"),
    (
        "negative stop",
        "p1_proposal",
        "stop_dist_pct",
        -0.02,
        "invalid_risk: stop_dist_pct is negative (-0.02)",
    ),
    (
        "stop not a number",
        "p1_proposal",
        "stop_dist_pct",
        "wide",
        "invalid_risk: stop_dist_pct is not a number ('wide')",
    ),
    ("flat", "position", "side", "FLAT", "flat: position side is FLAT"),
    ("zero quantity", "position", "quantity", 0, "zero_quantity: position quantity is 0"),
    (
        "stale position",
        "position",
        "ts_epoch",
        NOW - 1000,
        "stale_position: snapshot is 1000 s old",
    ),
    (
        "stale market state",
        "market_state",
        "ts_timestamp",
        int(NOW) - 400,
        "stale_marketstate: market state is 400 s old",
    ),
    (
        "future market state",
        "market_state",
        "ts_timestamp",
        int(NOW) + 86400,
        "invalid_marketstate: ts_timestamp is 86400 s in the future "
        "(more than MAX_CLOCK_SKEW_SEC=5)",
    ),
    (
        "bad created_at",
        "position",
        "created_at",
        "yesterday",
        "invalid_position: created_at is not an epoch or ISO-8601 time ('yesterday')",
    ),
]


@pytest.mark.parametrize(
    ("section", "field", "value", "reason"),
    [pytest.param(*c[1:], id=c[0]) for c in CLASSES],
)
def test_every_bad_input_class_gets_the_service_reason(
    section: str, field: str, value: Any, reason: str
) -> None:
    case = case_with(section, field, value)
    assert service_reason(case) == reason
    (out,) = run([case])
    assert out == {"index": 0, "line": 1, "name": "base", "symbol": "BTCUSDT", "error": reason}


def test_an_overflowing_result_is_the_engine_s_invalid_input() -> None:
    case = case_with("position", "entry_price", 1e-300)
    case["position"]["unrealized_pnl"] = 1e300  # R_net = 1e300 / the 1e-9 risk floor
    (out,) = run([case])
    assert out["error"] == "invalid_input: R_net: is not finite (inf) for these inputs"


def test_no_market_state_object_and_empty_hashes_read_as_absent_keys() -> None:
    case = case_with("market_state", "sigma", ...)
    case["market_state"] = {}
    (out,) = run([case])
    assert out["error"] == "missing_marketstate: market state key is absent"
    no_risk = {**BASE, "p1_proposal": None}
    (out,) = run([no_risk])
    assert "error" not in out and out["risk_unit"] == 2.0  # the fallback stop, 2 %


def test_values_are_read_the_service_s_way() -> None:
    """Numbers as text, a lower-case side, `None` text: what Redis hashes hold."""
    lenient = case_with("position", "side", " long ")
    lenient["position"].update(entry_price="100", unrealized_pnl="5", current_sl="None")
    (out,) = run([lenient])
    (raw,) = run([{**BASE, "position": {**BASE["position"], "current_sl": None}}], checks=None)
    raw.pop("name")
    assert out == {**raw, "name": "base"}


def test_a_valid_case_gives_exactly_the_raw_kernel_result() -> None:
    assert run([BASE]) == run([BASE], checks=None)


def test_every_reference_vector_is_either_the_raw_result_or_the_service_s_refusal() -> None:
    cases = [
        {k: c[k] for k in ("name", "position", "market_state", "p1_proposal")} for c in VECTORS
    ]
    service = run(cases)
    raw = run(cases, checks=None)
    refused = []
    for case, got, kernel in zip(VECTORS, service, raw, strict=True):
        if "error" in got:
            refused.append(case["name"])
            assert got["error"] == service_reason(case), case["name"]
        else:
            assert got == kernel, case["name"]
    # exactly the inputs the service refuses and the spec defines: entry 0, ts < 0, stop < 0
    assert "edge::entry_zero_risk_floor" in refused
    assert "edge::ts_negative_cap" in refused
    assert "edge::p1_stop_negative_clamped_1e-9" in refused
    for name in refused:
        case = next(c for c in VECTORS if c["name"] == name)
        p1 = case["p1_proposal"] or {}
        assert (
            case["position"]["entry_price"] <= 0
            or case["market_state"]["ts"] < 0
            or (p1.get("stop_dist_pct") or 0) < 0
        ), name


def test_time_fields_are_judged_at_now() -> None:
    case = case_with("position", "ts_epoch", NOW - 299)
    (fresh,) = run([case])
    assert "error" not in fresh
    (stale,) = run([case], checks=whatif.ServiceChecks(now=NOW + 2))
    assert stale["error"] == "stale_position: snapshot is 301 s old"
    (longer,) = run([case], checks=whatif.ServiceChecks(now=NOW + 2, max_input_age_sec=600))
    assert "error" not in longer


def test_r_basis_position_needs_a_quantity_as_in_the_service() -> None:
    case = {**BASE, "theta": {"r_basis": "position"}}
    (out,) = run([case])
    assert out["error"] == "invalid_position: quantity is missing (needed for r_basis=position)"
