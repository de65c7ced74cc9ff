"""The synthetic input producer is deterministic and produces valid (or deliberately
stale / flat / absent) inputs that exercise every action and every retraction."""

from __future__ import annotations

import math
from collections import Counter

import msgspec
import pytest

from harvest_async.core.input_hashes import NoAdvice, SymbolInputs, trim
from harvest_async.core.inputs import evaluate
from harvest_async.core.kernel import compute
from harvest_async.core.models import ACTIONS, Theta
from harvest_async.tools.simulate import KINDS, TTL_SEC, InputWrite, Simulator, symbols_for

START = 1_700_000_000.0
MAX_AGE = 300.0
INTENDED = {"flat", "no_position", "stale_marketstate", "stale_position"}


def run(seed: int, steps: int = 200, per_step: int = 10, n: int = 12) -> list[InputWrite]:
    sim = Simulator(symbols_for(n), seed=seed, start=START)
    out = sim.initial()
    for step in range(1, steps + 1):
        out.extend(sim.advance(START + step * 0.5, per_step))
    return out


def test_same_seed_same_writes() -> None:
    a, b = run(seed=42), run(seed=42)
    assert msgspec.json.encode(a) == msgspec.json.encode(b)
    assert len(a) > 2000


def test_other_seed_other_writes() -> None:
    assert msgspec.json.encode(run(seed=1)) != msgspec.json.encode(run(seed=2))


def test_initial_draws_no_random_numbers() -> None:
    sim_a = Simulator(symbols_for(5), seed=3, start=START)
    sim_b = Simulator(symbols_for(5), seed=3, start=START)
    sim_a.initial()
    sim_a.initial()
    assert sim_a.advance(START + 1, 50) == sim_b.advance(START + 1, 50)


def test_advance_returns_count_changes_stamped_now() -> None:
    sim = Simulator(["BTCUSDT", "ETHUSDT"], seed=0, start=START)
    writes = sim.advance(START + 7.5, 25)
    assert len(writes) == 25
    assert {w.at for w in writes} == {START + 7.5}
    assert {w.kind for w in writes} <= set(KINDS)
    assert sim.advance(START + 8, 0) == []


def test_initial_is_a_full_snapshot() -> None:
    symbols = symbols_for(40)
    writes = Simulator(symbols, seed=5, start=START).initial()
    assert {w.at for w in writes} == {START}
    assert {w.op for w in writes} == {"set"}
    per_kind = Counter(w.kind for w in writes)
    assert per_kind["marketstate"] == 40  # every symbol has a market state
    assert 0 < per_kind["position"] <= 40  # some have no position key at all
    assert 0 < per_kind["risk"] <= 40


def _apply(store: dict[tuple[str, str], dict[str, str]], write: InputWrite) -> None:
    if write.op == "delete":
        assert write.fields == {}
        store.pop((write.kind, write.symbol), None)
    else:
        assert write.op == "set"
        assert write.fields
        assert all(isinstance(v, str) for v in write.fields.values())
        store[(write.kind, write.symbol)] = dict(write.fields)


def test_every_input_is_valid_or_an_intended_no_advice_case() -> None:
    """Replays a long run through the codec and the kernel as the service would."""
    theta = Theta()
    sim = Simulator(symbols_for(20), seed=11, start=START)
    store: dict[tuple[str, str], dict[str, str]] = {}
    actions: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for write in sim.initial():
        _apply(store, write)
    for step in range(1, 1501):
        at = START + step * 0.5
        for write in sim.advance(at, 10):
            _apply(store, write)
            sym = write.symbol
            inputs = SymbolInputs(
                sym,
                trim("marketstate", store.get(("marketstate", sym), {})),
                trim("risk", store.get(("risk", sym), {})),
                trim("position", store.get(("position", sym), {})),
            )
            result = evaluate(inputs, at, theta=theta, max_input_age_sec=MAX_AGE)
            if isinstance(result, NoAdvice):
                assert result.reason in INTENDED, (write, result)
                reasons[result.reason] += 1
                continue
            decision = compute(result.position, result.market, result.risk, theta)
            actions[decision.harvest_action] += 1
    assert set(actions) == set(ACTIONS), actions
    assert set(reasons) == INTENDED, reasons
    # mostly advice, with every kind of retraction now and then
    assert sum(actions.values()) > sum(reasons.values())


def test_fields_follow_the_producers_formats() -> None:
    writes = run(seed=9, steps=300)
    seen_no_stop = seen_stop_loss = seen_flat = seen_delete = 0
    for w in writes:
        f = w.fields
        if w.op == "delete":
            seen_delete += 1
            assert w.kind == "position"
            continue
        if w.kind == "marketstate":
            probs = [float(f[k]) for k in ("p_trend", "p_mr", "p_chop")]
            assert all(0.0 <= p <= 1.0 for p in probs)
            assert math.isclose(sum(probs), 1.0, abs_tol=2e-6)
            assert float(f["sigma"]) > 0
            assert int(f["ts_timestamp"]) <= int(w.at)
        elif w.kind == "risk":
            if "stop_dist_pct" in f:
                assert 0.0 < float(f["stop_dist_pct"]) < 0.05
            else:
                seen_no_stop += 1
        elif f["side"] == "FLAT":
            seen_flat += 1
            assert float(f["quantity"]) == 0.0
        else:
            side, qty = f["side"], float(f["quantity"])
            entry, price = float(f["entry_price"]), float(f["current_price"])
            sign = 1.0 if side == "LONG" else -1.0
            assert side in ("LONG", "SHORT")
            assert qty > 0 and entry > 0
            assert math.isclose(
                float(f["unrealized_pnl"]), (price - entry) * qty * sign, rel_tol=1e-6, abs_tol=1e-6
            )
            assert int(f["created_at"]) <= w.at
            assert float(f["ts_epoch"]) <= w.at
            seen_stop_loss += "stop_loss" in f
    assert seen_no_stop and seen_stop_loss and seen_flat and seen_delete


def test_regime_shifts_and_sigma_spikes_happen_and_revert() -> None:
    writes = [w for w in run(seed=4, steps=400) if w.kind == "marketstate"]
    by_symbol: dict[str, list[tuple[float, float]]] = {}
    for w in writes:
        by_symbol.setdefault(w.symbol, []).append(
            (float(w.fields["p_trend"]), float(w.fields["sigma"]))
        )
    flips = sum(1 for series in by_symbol.values() for p, _s in series if p < 0.3)
    spikes = sum(1 for series in by_symbol.values() for _p, s in series if s > 0.015)
    calm = sum(1 for series in by_symbol.values() for p, s in series if p >= 0.4 and s < 0.01)
    assert flips and spikes
    assert calm > flips and calm > spikes


def test_ttls_match_the_real_producers() -> None:
    assert TTL_SEC == {"marketstate": 600, "risk": None, "position": 3600}


def test_symbols_for() -> None:
    assert symbols_for(3) == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    assert symbols_for(0) == []
    many = symbols_for(10_000)
    assert len(set(many)) == 10_000
    assert all(s.endswith("USDT") and s[:-4].isalpha() and s.isupper() for s in many)
    assert symbols_for(50) == many[:50]
    with pytest.raises(ValueError, match="n must be"):
        symbols_for(-1)


def test_rejects_bad_symbol_lists() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Simulator([], seed=1, start=START)
    with pytest.raises(ValueError, match="distinct"):
        Simulator(["BTCUSDT", "BTCUSDT"], seed=1, start=START)
