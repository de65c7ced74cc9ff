"""`explain`: the verdict from a snapshot of Redis and a time (tools/explain/decide.py, pure).

The snapshots are built the way Redis holds them; the verdicts must be what the engine's
own pieces (codec, kernel, gate) decide. The command on a real server:
tests/integration/test_explain_config_cli.py."""

from __future__ import annotations

from typing import Any

import msgspec

from harvest_async.config import Settings, settings_from_env
from harvest_async.core.input_hashes import Ready, SymbolInputs
from harvest_async.core.inputs import evaluate
from harvest_async.core.kernel import compute
from harvest_async.core.proposal import plan_id_for, proposal_fields, theta_id_for
from harvest_async.redis_io.liveness import Publisher
from harvest_async.tools.explain import Snapshot, explain, render_text

NOW = 1_700_000_000.0
SYM = "BTCUSDT"
SETTINGS = settings_from_env({"INSTANCE": "test"})  # floor 10 s, heartbeat 60 s


def inputs(pnl: float = 5.0, **market: str) -> SymbolInputs:
    ms = {"sigma": "0.01", "ts": "0.35", "p_trend": "0.5", "p_mr": "0.2", "p_chop": "0.3"}
    ms["ts_timestamp"] = str(int(NOW) - 10)
    ms.update(market)
    position = {
        "side": "LONG", "entry_price": "100", "unrealized_pnl": repr(pnl), "quantity": "1",
        "age_sec": "3600", "ts_epoch": repr(NOW - 2),
    }  # fmt: skip
    return SymbolInputs(SYM, ms, {"stop_dist_pct": "0.02"}, position)


def published(pnl: float, at: float, settings: Settings = SETTINGS) -> dict[str, str]:
    """The proposal hash the service would have written for `pnl` at `at`."""
    ready = evaluate(inputs(pnl), NOW, theta=settings.theta, max_input_age_sec=300.0)
    assert isinstance(ready, Ready)
    decision = compute(ready.position, ready.market, ready.risk, settings.theta)
    theta_id = theta_id_for(settings.theta)
    return proposal_fields(
        SYM, ready, decision, now=at, plan_id=plan_id_for(SYM, decision, theta_id),
        seq=int(at * 1000), trigger="change", theta_id=theta_id,
    )  # fmt: skip


ALIVE = [Publisher("vps-1", host="vps", pid="42", last_beat_epoch=NOW - 2)]


def run(snap: Snapshot, settings: Settings = SETTINGS, now: float = NOW) -> Any:
    return explain(settings, SYM, snap, now)


def test_no_proposal_publishes_now() -> None:
    e = run(Snapshot(inputs(5.0), None, ALIVE))
    assert (e.verdict.action, e.verdict.rule) == ("publish", "no proposal")
    assert "PARTIAL_25" in e.verdict.detail
    assert e.decision.harvest_action == "PARTIAL_25"
    # the next thing that happens by itself: the market state (10 s old) goes stale
    assert e.verdict.next_deadline == NOW - 10 + 300
    assert "too old" in e.verdict.next_event
    assert e.notes == []


def test_unchanged_proposal_waits_for_the_heartbeat() -> None:
    e = run(Snapshot(inputs(5.0), published(5.0, NOW - 20), ALIVE))
    assert (e.verdict.action, e.verdict.rule) == ("nothing", "no material change")
    assert e.verdict.next_deadline == NOW - 20 + 60
    assert e.verdict.next_event.startswith("heartbeat")


def test_heartbeat_due_republishes() -> None:
    e = run(Snapshot(inputs(5.0), published(5.0, NOW - 61), ALIVE))
    assert (e.verdict.action, e.verdict.rule) == ("publish", "heartbeat")


def test_material_change_inside_the_floor_waits_until_the_window_ends() -> None:
    e = run(Snapshot(inputs(9.0), published(5.0, NOW - 3), ALIVE))
    assert (e.verdict.action, e.verdict.rule) == ("wait", "floor")
    assert "action PARTIAL_25 -> PARTIAL_50" in e.verdict.detail
    assert e.verdict.next_deadline == NOW - 3 + 10


def test_material_change_after_the_floor_publishes_now() -> None:
    e = run(Snapshot(inputs(9.0), published(5.0, NOW - 30), ALIVE))
    assert (e.verdict.action, e.verdict.rule) == ("publish", "material change")
    assert "PARTIAL_25 -> PARTIAL_50" in e.verdict.detail


def test_a_retraction_keeps_the_floor_of_the_last_publish() -> None:
    snap = Snapshot(inputs(5.0), None, ALIVE, last_publish_at=NOW - 4)
    e = run(snap)
    assert (e.verdict.action, e.verdict.rule) == ("wait", "floor")
    assert e.verdict.next_deadline == NOW - 4 + 10


def test_bad_input_retracts_with_the_service_reason() -> None:
    e = run(Snapshot(inputs(5.0, p_trend="1.5"), published(5.0, NOW - 3), ALIVE))
    assert (e.verdict.action, e.verdict.rule) == ("retract", "invalid_marketstate")
    assert "invalid_marketstate: p_trend is outside [0, 1] (1.5)" in e.verdict.detail
    assert e.verdict.next_deadline is None
    assert e.kernel == [] and e.decision is None


def test_bad_input_without_a_proposal_is_no_advice() -> None:
    e = run(Snapshot(inputs(5.0, sigma="abc"), None, ALIVE))
    assert e.verdict.action == "no advice"
    assert "sigma is not a number ('abc')" in e.verdict.detail


def test_a_stamp_ahead_of_the_clock_names_when_it_is_checked_again() -> None:
    e = run(Snapshot(inputs(5.0, ts_timestamp=str(int(NOW) + 60)), None, ALIVE))
    assert e.verdict.rule == "invalid_marketstate"
    assert e.verdict.next_deadline == NOW + 60 - 5  # MAX_CLOCK_SKEW_SEC


def test_kernel_reasons_name_the_rules() -> None:
    e = run(Snapshot(inputs(13.0), None, ALIVE))
    text = "\n".join(e.kernel)
    assert "R_net >= T3_R 6 -> PARTIAL_75" in text
    assert "profit lock: R_net >= lock_R 1.5 -> move the stop to 100.2" in text
    assert "< kill_threshold 0.6 -> no full close" in text
    flip = run(Snapshot(inputs(13.0, p_trend="0.1", p_mr="0.5", p_chop="0.4"), None, ALIVE))
    assert flip.decision.harvest_action == "FULL_CLOSE_PROPOSED"
    assert "FULL_CLOSE_PROPOSED (overrides the ladder)" in flip.kernel[-1]


def test_no_publisher_and_other_tunables_are_noted() -> None:
    other = settings_from_env({"THETA_KILL_THRESHOLD": "0.7"})
    e = run(Snapshot(inputs(5.0), published(5.0, NOW - 3), []), settings=other)
    assert any("no live publisher" in note for note in e.notes)
    assert any("theta_id" in note for note in e.notes)


def test_a_symbol_not_in_symbols_is_not_followed() -> None:
    listed = settings_from_env({"SYMBOLS": "ETHUSDT"})
    e = run(Snapshot(inputs(5.0), None, ALIVE), settings=listed)
    assert e.verdict.action == "not followed"


def test_text_and_json_say_the_same() -> None:
    e = run(Snapshot(inputs(9.0), published(5.0, NOW - 3), ALIVE))
    text = render_text(e)
    assert text.splitlines()[1] == "decision: WAIT (floor)"
    assert "next deadline: 22:13:27 UTC (in 7.0 s)" in text
    assert "publishers: vps-1 (pid 42 on vps, beat 2.0 s ago)" in text
    data = msgspec.json.decode(msgspec.json.encode(e))
    assert data["verdict"]["action"] == "wait"
    assert data["verdict"]["next_deadline"] == NOW + 7
    assert data["decision"]["harvest_action"] == "PARTIAL_50"
