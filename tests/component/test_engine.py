"""The engine driven directly: explicit `now` values, no asyncio, no I/O."""

from __future__ import annotations

import random

import pytest

from harvest_async.core import engine as engine_mod
from harvest_async.core.engine import Engine
from harvest_async.core.gate import GateConfig
from harvest_async.core.input_hashes import SymbolInputs
from harvest_async.core.kernel import compute
from harvest_async.core.models import Theta
from harvest_async.core.ports import Output, PublishOut, RetractOut
from tests.support.component import (
    FLOOR,
    HEARTBEAT,
    MS,
    NONE_PNL,
    P25_PNL,
    P50_PNL,
    P75_PNL,
    T0,
    engine_for,
    inp,
)


def publish(e: Engine, sym: str, now: float) -> PublishOut:
    out = e.evaluate(sym, now)
    assert isinstance(out, PublishOut), out
    e.confirm([out])
    return out


def started(*syms: str, now: float = T0, **kwargs: object) -> tuple[Engine, list[PublishOut]]:
    """An engine past its startup pass with `syms` published at `now` (pnl NONE)."""
    e = engine_for(**kwargs)
    outs = []
    for sym in syms:
        e.observe(inp(sym))
        outs.append(publish(e, sym, now))
    e.starting = False
    return e, outs


# -- startup and change -----------------------------------------------------------------


def test_startup_publish_then_change() -> None:
    e = engine_for()
    assert e.starting
    assert e.observe(inp("A"))
    first = e.evaluate("A", T0)
    assert isinstance(first, PublishOut)
    assert first.trigger == "startup" and first.fields["trigger"] == "startup"
    assert first.material
    assert first.decision.harvest_action == "NONE"
    assert first.at == T0
    e.confirm([first])
    assert e.published("A") == first.decision
    e.starting = False

    assert e.observe(inp("A", P25_PNL))
    second = publish(e, "A", T0 + FLOOR)
    assert second.trigger == "change" and second.fields["trigger"] == "change"
    assert second.decision.harvest_action == "PARTIAL_25"
    assert second.plan_id != first.plan_id
    assert second.seq > first.seq


def test_second_publish_during_startup_pass_is_a_change() -> None:
    e = engine_for()
    e.observe(inp("A"))
    publish(e, "A", T0)
    e.observe(inp("A", P25_PNL))
    assert publish(e, "A", T0 + FLOOR).trigger == "change"  # still e.starting


def test_symbol_first_seen_after_startup_is_a_change() -> None:
    e, _ = started("A")
    e.observe(inp("B"))
    assert publish(e, "B", T0 + 1).trigger == "change"


def test_identical_inputs_are_not_recomputed() -> None:
    e = engine_for()
    assert e.observe(inp("A"))
    assert not e.observe(inp("A"))  # equal content, new objects
    assert e.observe(inp("A", P25_PNL))
    assert not e.observe(inp("A", P25_PNL))
    # nothing known and nothing published: not tracked at all
    assert not e.observe(SymbolInputs("B"))
    assert len(e) == 1


# -- floor ------------------------------------------------------------------------------


def test_floor_trailing_edge_publishes_the_latest_state() -> None:
    e, (first,) = started("A")
    assert e.next_deadline() == T0 + HEARTBEAT
    for dt, pnl in ((2.0, P25_PNL), (4.0, P50_PNL), (6.0, P75_PNL)):
        assert e.observe(inp("A", pnl))
        assert e.evaluate("A", T0 + dt) is None  # deferred
        assert e.next_deadline() == T0 + FLOOR
    assert e.published("A") == first.decision
    assert e.due(T0 + FLOOR - 0.001) == []
    assert e.due(T0 + FLOOR) == ["A"]
    out = e.evaluate("A", T0 + FLOOR)
    assert isinstance(out, PublishOut)
    assert out.decision.harvest_action == "PARTIAL_75"  # the last state, once
    assert out.trigger == "change"
    assert out.at == T0 + FLOOR
    e.confirm([out])
    assert e.due(T0 + FLOOR) == []
    # the superseded heartbeat at T0 + 60 may wake the caller, but nothing is due then
    assert e.due(T0 + HEARTBEAT) == []
    assert e.due(T0 + FLOOR + HEARTBEAT - 0.001) == []
    assert e.due(T0 + FLOOR + HEARTBEAT) == ["A"]


def test_floor_nothing_published_when_state_reverted_by_window_end() -> None:
    e, (first,) = started("A")
    e.observe(inp("A", P25_PNL))
    assert e.evaluate("A", T0 + 2) is None
    e.observe(inp("A", NONE_PNL))  # back to what is published
    assert e.evaluate("A", T0 + 4) is None
    outputs = [e.evaluate(sym, T0 + FLOOR) for sym in e.due(T0 + FLOOR)]
    assert all(o is None for o in outputs)
    # the heartbeat still comes on time
    assert e.due(T0 + HEARTBEAT) == ["A"]
    hb = e.evaluate("A", T0 + HEARTBEAT)
    assert isinstance(hb, PublishOut) and hb.trigger == "heartbeat"
    assert hb.plan_id == first.plan_id


def test_fractional_floor_publishes_at_the_window_end() -> None:
    """At its own deadline a deferred symbol publishes (last + 0.3 rounds down here)."""
    last_at = 1_700_000_596.853
    e, _ = started("A", now=last_at, gate=GateConfig(floor_sec=0.3, heartbeat_sec=60.0))
    e.observe(inp("A", P25_PNL))
    assert e.evaluate("A", last_at + 0.1) is None
    end = e.next_deadline()
    assert end is not None and e.due(end) == ["A"]
    assert isinstance(e.evaluate("A", end), PublishOut)


def test_non_material_change_is_not_published_before_heartbeat() -> None:
    e, _ = started("A")
    e.observe(inp("A", NONE_PNL + 0.02))  # R moves by 0.01
    assert e.evaluate("A", T0 + 30) is None
    assert e.due(T0 + 59.999) == []
    assert e.due(T0 + HEARTBEAT) == ["A"]


# -- heartbeat --------------------------------------------------------------------------


def test_heartbeat_keeps_plan_id_with_new_seq() -> None:
    e, (first,) = started("A")
    assert e.due(T0 + HEARTBEAT - 0.5) == []
    assert e.due(T0 + HEARTBEAT) == ["A"]
    hb = e.evaluate("A", T0 + HEARTBEAT)
    assert isinstance(hb, PublishOut)
    assert hb.trigger == "heartbeat" and hb.fields["trigger"] == "heartbeat"
    assert not hb.material
    assert hb.plan_id == first.plan_id == hb.fields["plan_id"]
    assert hb.seq > first.seq and int(hb.fields["seq"]) == hb.seq
    e.confirm([hb])
    assert e.next_deadline() == T0 + 2 * HEARTBEAT
    assert e.due(T0 + 2 * HEARTBEAT) == ["A"]
    hb2 = e.evaluate("A", T0 + 2 * HEARTBEAT)
    assert isinstance(hb2, PublishOut)
    assert hb2.plan_id == first.plan_id and hb2.seq > hb.seq


def test_heartbeat_shows_the_position_age_advancing() -> None:
    e = engine_for()
    e.observe(inp("A", created_at=repr(T0 - 3600)))
    first = publish(e, "A", T0)
    assert float(first.fields["position_age_sec"]) == pytest.approx(3600.0)
    assert e.due(T0 + HEARTBEAT) == ["A"]
    hb = e.evaluate("A", T0 + HEARTBEAT)
    assert isinstance(hb, PublishOut)
    assert float(hb.fields["position_age_sec"]) == pytest.approx(3600.0 + HEARTBEAT)
    assert float(hb.fields["k_age_penalty"]) > float(first.fields["k_age_penalty"])
    assert hb.plan_id == first.plan_id  # the kill score moved by far less than eps


# -- retraction -------------------------------------------------------------------------

RETRACTIONS = [
    pytest.param(inp("A", position=None), "no_position", id="position-deleted"),
    pytest.param(inp("A", side="FLAT"), "flat", id="flat"),
    pytest.param(inp("A", quantity="0"), "zero_quantity", id="zero-quantity"),
    pytest.param(inp("A", entry_price="abc"), "invalid_position", id="invalid-position"),
    pytest.param(inp("A", entry_price="-1"), "invalid_position", id="entry-not-positive"),
    pytest.param(inp("A", side="BOTH"), "invalid_position", id="unknown-side"),
    pytest.param(
        inp("A", ms={**MS, "sigma": "nan"}), "invalid_marketstate", id="invalid-marketstate"
    ),
    pytest.param(inp("A", ms={**MS, "p_mr": "1.2"}), "invalid_marketstate", id="probability"),
    pytest.param(inp("A", risk={"stop_dist_pct": "inf"}), "invalid_risk", id="invalid-risk"),
    pytest.param(inp("A", ms=None), "missing_marketstate", id="marketstate-deleted"),
    pytest.param(inp("A", ts_epoch=repr(T0 - 400)), "stale_position", id="stale-position"),
    pytest.param(
        inp("A", ms={**MS, "ts_timestamp": str(int(T0) - 400)}),
        "stale_marketstate",
        id="stale-marketstate",
    ),
]


@pytest.mark.parametrize(("bad", "reason"), RETRACTIONS)
def test_retraction_is_immediate_even_inside_floor(bad: SymbolInputs, reason: str) -> None:
    e, (first,) = started("A")
    assert e.observe(bad)
    out = e.evaluate("A", T0 + 1)  # well inside the floor window
    assert isinstance(out, RetractOut), out
    assert out.reason.split(":")[0] == reason
    assert out.seq > first.seq
    assert out.at == T0 + 1
    assert out.audit_fields()["event"] == "retract"
    assert out.audit_fields()["reason"] == out.reason
    e.confirm([out])
    assert e.published("A") is None
    assert e.status("A") == reason
    assert e.evaluate("A", T0 + 2) is None  # retracted once, not again


def test_stale_by_time_alone_retracts_on_a_timer() -> None:
    e, _ = started("A", max_input_age_sec=30.0)
    e.observe(inp("A", ts_epoch=repr(T0)))  # same decision, now with a snapshot time
    assert e.evaluate("A", T0 + 1) is None
    deadline = e.next_deadline()
    assert deadline is not None and T0 + 30 <= deadline < T0 + 30.01
    assert e.due(deadline) == ["A"]
    out = e.evaluate("A", deadline)
    assert isinstance(out, RetractOut) and out.reason.startswith("stale_position")


def test_future_stamp_retracts_then_publishes_when_within_the_skew() -> None:
    e, (first,) = started("A", max_clock_skew_sec=5.0)
    e.observe(inp("A", ms={**MS, "ts_timestamp": repr(T0 + 60)}))  # a minute ahead
    out = e.evaluate("A", T0 + 1)
    assert isinstance(out, RetractOut)
    assert out.reason == (
        "invalid_marketstate: ts_timestamp is 59 s in the future (more than MAX_CLOCK_SKEW_SEC=5)"
    )
    e.confirm([out])
    deadline = e.next_deadline()  # no new input needed: a timer when the skew ends
    assert deadline is not None and T0 + 55 <= deadline < T0 + 55.01
    assert e.due(deadline - 0.01) == []
    assert e.due(deadline) == ["A"]
    again = e.evaluate("A", deadline)
    assert isinstance(again, PublishOut) and again.seq > out.seq > first.seq
    assert again.fields["marketstate_age_sec"] == "0.0"


@pytest.mark.parametrize(("bad", "reason"), RETRACTIONS)
def test_no_retraction_when_nothing_was_published(bad: SymbolInputs, reason: str) -> None:
    e = engine_for()
    e.starting = False
    e.observe(bad)
    assert e.evaluate("A", T0) is None
    assert e.status("A") in (reason, None)


def test_publishes_again_after_retraction() -> None:
    e, (first,) = started("A")
    e.observe(inp("A", side="FLAT"))
    retract = e.evaluate("A", T0 + 1)
    assert isinstance(retract, RetractOut)
    e.confirm([retract])
    e.observe(inp("A", P25_PNL))
    assert e.evaluate("A", T0 + 3) is None  # the floor survives the retraction
    assert e.next_deadline() == T0 + FLOOR
    assert e.due(T0 + FLOOR) == ["A"]
    again = e.evaluate("A", T0 + FLOOR)
    assert isinstance(again, PublishOut)
    assert again.trigger == "change" and again.decision.harvest_action == "PARTIAL_25"
    assert again.seq > retract.seq > first.seq


def test_publishes_immediately_after_retraction_outside_floor() -> None:
    e, _ = started("A")
    e.observe(inp("A", position=None))
    retract = e.evaluate("A", T0 + 30)
    assert isinstance(retract, RetractOut)
    e.confirm([retract])
    e.observe(inp("A"))
    again = e.evaluate("A", T0 + 31)
    assert isinstance(again, PublishOut) and again.seq > retract.seq


def test_a_closed_symbol_is_forgotten_once_its_floor_window_has_passed() -> None:
    # under SYMBOLS='*' a symbol whose position closed must not be kept forever
    e, _ = started("A", "B")
    e.observe(inp("A", position=None))
    e.forget_absent("A", T0 + 1)  # still published: kept
    retract = e.evaluate("A", T0 + 1)
    assert isinstance(retract, RetractOut)
    e.confirm([retract])
    assert "A" in e.symbols()  # the floor's memory of its last publish (T0) is kept
    e.forget_absent("A", T0 + FLOOR - 1)
    assert "A" in e.symbols()
    e.forget_absent("A", T0 + FLOOR)
    assert e.symbols() == ["B"]
    e.forget_absent("B", T0 + 10 * FLOOR)  # B still has its position: kept
    assert e.symbols() == ["B"]


def test_seq_keeps_increasing_when_a_closed_symbol_is_forgotten_and_comes_back() -> None:
    # with no floor a burst can run seq ahead of the millisecond clock; forgetting the
    # counter then would restart it below what was already written
    e, (first,) = started("A", gate=GateConfig(floor_sec=0.0, heartbeat_sec=HEARTBEAT))
    outs: list[Output] = [first]
    for pnl in (P25_PNL, P50_PNL, P75_PNL):
        e.observe(inp("A", pnl))
        outs.append(publish(e, "A", T0))
    e.observe(inp("A", position=None))
    retract = e.evaluate("A", T0)
    assert isinstance(retract, RetractOut)
    e.confirm([retract])
    outs.append(retract)
    e.forget_absent("A", T0 + 0.001)
    e.observe(inp("A", P25_PNL))
    outs.append(publish(e, "A", T0 + 0.001))
    seqs = [o.seq for o in outs]
    assert seqs == sorted(set(seqs)), seqs


# -- startup adoption -------------------------------------------------------------------


def existing(at: float, pnl: float = NONE_PNL, **config: object) -> dict[str, str]:
    """A proposal hash as a previous run of this service wrote it at `at`."""
    prev = engine_for(**config)
    prev.observe(inp("A", pnl))
    out = prev.evaluate("A", at)
    assert isinstance(out, PublishOut)
    return dict(out.fields)


def test_adopts_matching_young_hash() -> None:
    old = existing(T0 - 20)
    e = engine_for()
    e.note_existing("A", old)
    e.observe(inp("A"))
    assert e.evaluate("A", T0) is None  # adopted, not re-published
    assert e.published("A") is not None
    assert e.status("A") == "ok"
    # its heartbeat is due 60 s after the adopted write, with the adopted plan_id
    e.starting = False
    hb = e.evaluate("A", T0 - 20 + HEARTBEAT)
    assert isinstance(hb, PublishOut)
    assert hb.trigger == "heartbeat"
    assert hb.plan_id == old["plan_id"]
    assert hb.seq > int(old["seq"])


def test_adopted_hash_keeps_the_floor() -> None:
    old = existing(T0 - 5)
    e = engine_for()
    e.note_existing("A", old)
    e.observe(inp("A"))
    assert e.evaluate("A", T0) is None
    e.observe(inp("A", P25_PNL))
    assert e.evaluate("A", T0 + 1) is None  # the adopted write's window ends at T0 + 5
    assert e.next_deadline() == T0 + 5


def test_adopted_hash_schedules_its_heartbeat() -> None:
    old = existing(T0 - 20)
    e = engine_for()
    e.note_existing("A", old)
    e.observe(inp("A"))
    assert e.evaluate("A", T0) is None
    assert e.next_deadline() == T0 - 20 + HEARTBEAT
    assert e.due(T0 - 20 + HEARTBEAT) == ["A"]


ORIGINAL_FORMAT = {  # the original publisher's hash: no plan_id, ts_epoch, seq, theta_id
    "harvest_action": "NONE",
    "new_sl_proposed": "None",
    "R_net": "0.45",
    "risk_unit": "2.0",
    "cost_est": "0.1",
    "kill_score": "0.5",
    "reason_codes": "",
    "k_regime_flip": "0.0",
    "k_sigma_spike": "0.0",
    "k_ts_drop": "0.0",
    "k_age_penalty": "0.0",
    "sigma": "0.01",
    "ts": "0.35",
    "p_trend": "0.5",
    "p_mr": "0.2",
    "p_chop": "0.3",
    "computed_at_utc": "2023-11-14T22:13:10+00:00",
    "last_update_epoch": str(int(T0) - 10),
    "position_side": "LONG",
    "position_age_sec": "0.0",
    "position_current_price": "101.0",
    "position_entry_price": "100.0",
    "position_unrealized_pnl": "1.0",
}


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(existing(T0 - HEARTBEAT - 1), id="older-than-heartbeat"),
        pytest.param(existing(T0 - HEARTBEAT), id="exactly-heartbeat-old"),
        pytest.param(existing(T0 - 20, P25_PNL), id="different-decision"),
        pytest.param(existing(T0 - 20, theta=Theta(cost_bps=11.0)), id="other-theta"),
        pytest.param(existing(T0 + 30), id="from-the-future"),
        pytest.param(ORIGINAL_FORMAT, id="original-publisher-format"),
        pytest.param({**existing(T0 - 20), "ts_epoch": "junk"}, id="corrupt"),
    ],
)
def test_existing_hash_is_replaced(fields: dict[str, str]) -> None:
    e = engine_for()
    e.note_existing("A", fields)
    e.observe(inp("A"))
    out = e.evaluate("A", T0)
    assert isinstance(out, PublishOut)
    assert out.trigger == "startup"
    assert out.seq > int(fields.get("seq", "0"))


def test_seq_exceeds_an_adopted_hash_seq() -> None:
    big = int(T0 * 1000) + 10**9  # e.g. written by a host whose clock ran ahead
    e = engine_for()
    e.note_existing("A", {**existing(T0 - 20), "seq": str(big)})
    e.observe(inp("A", P25_PNL))  # differs: replaced
    out = e.evaluate("A", T0)
    assert isinstance(out, PublishOut) and out.seq > big


def test_existing_hash_without_position_is_retracted() -> None:
    e = engine_for()
    e.note_existing("A", existing(T0 - 20))
    e.observe(SymbolInputs("A"))
    out = e.evaluate("A", T0)
    assert isinstance(out, RetractOut) and out.reason.startswith("no_position")


def test_seq_strictly_increasing_across_publishes_and_retractions() -> None:
    e, (first,) = started("A")
    outs: list[Output] = [first]
    steps = [
        (T0 + 60, inp("A")),  # heartbeat
        (T0 + 61, inp("A", side="FLAT")),  # retract
        (T0 + 71, inp("A", P25_PNL)),  # publish
        (T0 + 71, inp("A", entry_price="x")),  # retract in the same millisecond
        (T0 + 81, inp("A", P50_PNL)),
        (T0 + 81, inp("A", position=None)),
        (T0 + 91, inp("A", P75_PNL)),
    ]
    for now, state in steps:
        e.observe(state)
        out = e.evaluate("A", now)
        assert out is not None, now
        e.confirm([out])
        outs.append(out)
    kinds = [type(o).__name__[0] for o in outs]
    assert kinds == ["P", "P", "R", "P", "R", "P", "R", "P"]
    seqs = [o.seq for o in outs]
    assert seqs == sorted(set(seqs))


# -- configuration, errors, confirmation -------------------------------------------------


def test_symbol_not_configured_is_ignored() -> None:
    e = engine_for(symbols=("A", "B"))
    assert not e.wants("Z")
    assert not e.observe(inp("Z"))
    e.note_existing("Z", existing(T0 - 20))
    assert e.evaluate("Z", T0) is None
    assert len(e) == 0
    assert e.symbols() == []
    assert e.observe(inp("A"))
    assert len(e) == 1


def test_kernel_exception_retracts_that_symbol_only(monkeypatch: pytest.MonkeyPatch) -> None:
    e, _ = started("A", "B", "C")

    def failing(position, market, risk, theta):  # type: ignore[no-untyped-def]
        if position.symbol == "B":
            raise RuntimeError("boom")
        return compute(position, market, risk, theta)

    monkeypatch.setattr(engine_mod, "compute", failing)
    for sym in ("A", "B", "C"):
        e.observe(inp(sym, P25_PNL))
    outs = {sym: e.evaluate(sym, T0 + FLOOR) for sym in ("A", "B", "C")}
    assert isinstance(outs["A"], PublishOut) and isinstance(outs["C"], PublishOut)
    assert isinstance(outs["B"], RetractOut)
    assert outs["B"].reason.startswith("internal_error")
    e.confirm([o for o in outs.values() if o is not None])
    assert e.status("B") == "internal_error"
    assert e.published("B") is None
    assert e.published("A") == outs["A"].decision


def test_kernel_exception_for_unpublished_symbol_is_quiet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine_mod, "compute", lambda *a: 1 / 0)
    e = engine_for()
    e.observe(inp("A"))
    assert e.evaluate("A", T0) is None
    assert e.status("A") == "internal_error"


def test_unconfirmed_output_is_not_state() -> None:
    e, (first,) = started("A")
    e.observe(inp("A", P25_PNL))
    out1 = e.evaluate("A", T0 + 20)
    out2 = e.evaluate("A", T0 + 20)
    assert isinstance(out1, PublishOut)
    assert out1 == out2
    assert e.published("A") == first.decision
    e.observe(inp("A", position=None))
    r1 = e.evaluate("A", T0 + 21)
    r2 = e.evaluate("A", T0 + 21)
    assert isinstance(r1, RetractOut) and r1 == r2
    assert e.published("A") == first.decision


def test_retry_later_reschedules_an_unconfirmed_write() -> None:
    e, _ = started("A")
    e.observe(inp("A", P25_PNL))
    out = e.evaluate("A", T0 + 20)
    assert isinstance(out, PublishOut)
    e.retry_later(["A", "unknown"], T0 + 20.5)  # the write failed
    assert e.next_deadline() == T0 + 20.5
    assert e.due(T0 + 20.5) == ["A"]
    again = e.evaluate("A", T0 + 20.5)
    assert isinstance(again, PublishOut) and again.decision == out.decision


def test_unsure_writes_the_same_decision_again() -> None:
    """A refused write that Redis applied in part (hash replaced, audit entry refused):
    what Redis shows is no longer what was confirmed, so even an unchanged decision is
    written again, and a retraction still follows a closed position."""
    e, (first, _) = started("A", "B")
    assert e.evaluate("A", T0 + 20) is None  # nothing material: nothing to write
    e.unsure(["A", "unknown"])
    again = e.evaluate("A", T0 + 20)
    assert isinstance(again, PublishOut) and again.plan_id == first.plan_id
    e.unsure(["B"])
    e.observe(inp("B", position=None))
    assert isinstance(e.evaluate("B", T0 + 20), RetractOut)


# -- bounded memory ---------------------------------------------------------------------

N_SYMBOLS = 1000


@pytest.fixture(scope="module")
def churn() -> tuple[int, int, int]:
    """100,000 change events over 1,000 symbols, fed like the runner does: observe every
    event, then once per cycle evaluate the (coalesced) dirty symbols and the due timers.
    Returns (tracked symbols, largest heap seen, final heap)."""
    n_events, per_cycle = 100_000, 2000
    syms = [f"S{i:04d}" for i in range(N_SYMBOLS)]
    pnls = (NONE_PNL, NONE_PNL + 0.02, P25_PNL, P50_PNL, P75_PNL)
    variants = {s: [inp(s, p) for p in pnls] for s in syms}
    e = engine_for()
    rng = random.Random(7)
    now = T0
    max_heap = 0
    dirty: set[str] = set()
    for i in range(n_events):
        sym = syms[i % N_SYMBOLS] if i < N_SYMBOLS else rng.choice(syms)
        e.observe(variants[sym][rng.randrange(len(pnls))])
        dirty.add(sym)
        if i % per_cycle == per_cycle - 1:
            now += 3.0
            batch = [o for s in sorted(dirty | set(e.due(now))) if (o := e.evaluate(s, now))]
            e.confirm(batch)
            dirty.clear()
            e.starting = False
            max_heap = max(max_heap, e.timer_entries)
    return len(e), max_heap, e.timer_entries


def test_memory_is_one_state_per_symbol(churn: tuple[int, int, int]) -> None:
    tracked, max_heap, _ = churn
    assert tracked == N_SYMBOLS
    # never more entries than one per floor window of a heartbeat, plus two, per symbol
    assert max_heap <= (HEARTBEAT / FLOOR + 2) * N_SYMBOLS


def test_timer_heap_is_at_most_three_entries_per_symbol(churn: tuple[int, int, int]) -> None:
    _, max_heap, final_heap = churn
    assert final_heap <= 3 * N_SYMBOLS
    assert max_heap <= 3 * N_SYMBOLS
