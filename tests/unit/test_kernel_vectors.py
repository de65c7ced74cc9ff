"""The kernel reproduces every public reference vector bit for bit (docs/kernel.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from harvest_async.core.kernel import compute
from harvest_async.core.models import Decision, MarketState, Position, RiskProposal, Theta

DATA = Path(__file__).resolve().parents[1] / "data" / "kernel_vectors_public.json"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "spec" / "kernel_vectors_public.json"

VECTORS: list[dict[str, Any]] = json.loads(DATA.read_bytes())

K_FIELDS = ("regime_flip", "sigma_spike", "ts_drop", "age_penalty")


def _inputs(case: dict[str, Any]) -> tuple[Position, MarketState, RiskProposal | None, Theta]:
    position = msgspec.convert(case["position"], Position)
    market = msgspec.convert(case["market_state"], MarketState)
    p1 = case["p1_proposal"]
    risk = None if p1 is None else msgspec.convert(p1, RiskProposal)
    theta = msgspec.convert(case["theta"], Theta)
    return position, market, risk, theta


def _same_float(actual: float, expected: float) -> bool:
    """Exact equality, and the same type (an int where a float belongs is a difference)."""
    return type(actual) is float and type(expected) is float and actual == expected


def test_vector_file_is_the_shared_spec_copy() -> None:
    if not SHARED.exists():
        pytest.skip(f"{SHARED} not present (only in the development workspace)")
    assert DATA.read_bytes() == SHARED.read_bytes()


def test_vector_file_shape() -> None:
    assert len(VECTORS) == 275
    names = [case["name"] for case in VECTORS]
    assert len(set(names)) == len(names), "vector names must be unique"


@pytest.mark.parametrize("case", VECTORS, ids=[case["name"] for case in VECTORS])
def test_vector(case: dict[str, Any]) -> None:
    expected = case["expected"]
    d = compute(*_inputs(case))
    assert isinstance(d, Decision)

    assert d.harvest_action == expected["harvest_action"]
    if expected["new_sl_proposed"] is None:
        assert d.new_sl_proposed is None
    else:
        assert d.new_sl_proposed is not None
        assert _same_float(d.new_sl_proposed, expected["new_sl_proposed"])
    for field in ("R_net", "risk_unit", "cost_est", "kill_score"):
        assert _same_float(getattr(d, field), expected[field]), field
    assert list(d.reason_codes) == expected["reason_codes"]  # order matters
    assert set(expected["k_components"]) == set(K_FIELDS)
    for field in K_FIELDS:
        assert _same_float(getattr(d.k_components, field), expected["k_components"][field]), field
    assert len(d.tranche_weights) == len(expected["tranche_weights"]) == 3
    for actual_w, expected_w in zip(d.tranche_weights, expected["tranche_weights"], strict=True):
        assert _same_float(actual_w, expected_w)


@pytest.mark.parametrize("case", VECTORS[:20], ids=[case["name"] for case in VECTORS[:20]])
def test_vector_via_json_encoding(case: dict[str, Any]) -> None:
    """Encoding the decision with msgspec gives back exactly the expected JSON values."""
    d = compute(*_inputs(case))
    assert json.loads(msgspec.json.encode(d)) == case["expected"]
