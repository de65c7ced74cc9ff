"""Metrics: the Observer/RunnerHooks object on its own registry, read back with
`get_sample_value` and the text exposition (no HTTP here; see the endpoint test)."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import REGISTRY, generate_latest

from harvest_async.core.models import Decision, KComponents, Theta
from harvest_async.core.ports import PublishOut, RetractOut
from harvest_async.service.fanout import combine
from harvest_async.service.metrics import ACTION_CODES, METRIC_NAMES, Metrics
from harvest_async.service.metrics_server import serve_metrics

T0 = 1_700_000_000.0


def publish(
    symbol: str,
    action: str = "NONE",
    *,
    trigger: str = "change",
    kill: float = 0.55,
    r_net: float = 1.5,
    at: float = T0,
    ms_age: str = "3.5",
    pos_age: str = "",
) -> PublishOut:
    decision = Decision(
        harvest_action=action,  # type: ignore[arg-type]
        new_sl_proposed=None,
        R_net=r_net,
        risk_unit=1.0,
        cost_est=0.1,
        kill_score=kill,
        reason_codes=(),
        k_components=KComponents(1.0, 0.25, 0.1, 0.5),
        tranche_weights=(0.3, 0.3, 0.4),
    )
    fields = {
        "symbol": symbol,
        "marketstate_age_sec": ms_age,
        "position_snapshot_age_sec": pos_age,
    }
    return PublishOut(symbol, fields, decision, "p" * 16, 1, at, trigger, True)


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_counters_and_gauges_follow_publishes_and_retractions() -> None:
    m = Metrics(symbol_cap=10, process_metrics=False)
    m.on_publish(publish("BTCUSDT", "PARTIAL_25", trigger="startup", kill=0.7, r_net=2.5))
    m.on_publish(publish("ETHUSDT", "FULL_CLOSE_PROPOSED", at=T0 + 5))
    m.on_publish(publish("ETHUSDT", "FULL_CLOSE_PROPOSED", trigger="heartbeat", at=T0 + 65))

    assert value(m, "harvest_publishes_total", trigger="startup", action="PARTIAL_25") == 1
    assert value(m, "harvest_publishes_total", trigger="change", action="FULL_CLOSE_PROPOSED") == 1
    assert (
        value(m, "harvest_publishes_total", trigger="heartbeat", action="FULL_CLOSE_PROPOSED") == 1
    )
    assert value(m, "harvest_last_publish_timestamp_seconds") == T0 + 65
    assert value(m, "harvest_symbol_kill_score", symbol="BTCUSDT") == 0.7
    assert value(m, "harvest_symbol_r_net", symbol="BTCUSDT") == 2.5
    assert value(m, "harvest_symbol_action", symbol="BTCUSDT") == ACTION_CODES["PARTIAL_25"]
    assert value(m, "harvest_symbol_action", symbol="ETHUSDT") == 4
    assert value(m, "harvest_symbol_kill_component", symbol="BTCUSDT", component="sigma_spike") == (
        0.25
    )
    assert value(m, "harvest_symbol_input_age_seconds", symbol="BTCUSDT", input="marketstate") == (
        3.5
    )
    # an unknown age (empty field) has no series rather than a made-up value
    assert value(m, "harvest_symbol_input_age_seconds", symbol="BTCUSDT", input="position") is None
    assert value(m, "harvest_symbols", state="published") == 2

    m.on_retract(RetractOut("ETHUSDT", "stale_marketstate: market state is 900 s old", 2, T0))
    assert value(m, "harvest_retractions_total", reason="stale_marketstate") == 1
    assert value(m, "harvest_symbols", state="published") == 1
    assert value(m, "harvest_symbols", state="stale_marketstate") == 1
    # a retracted symbol has no per-symbol series: no advice is not a value
    assert value(m, "harvest_symbol_kill_score", symbol="ETHUSDT") is None
    assert value(m, "harvest_symbol_kill_component", symbol="ETHUSDT", component="ts_drop") is None

    # a closed position is the normal end: counted as a retraction, not as a problem state
    m.on_retract(RetractOut("BTCUSDT", "flat: position side is FLAT", 3, T0))
    assert value(m, "harvest_retractions_total", reason="flat") == 1
    assert value(m, "harvest_symbols", state="published") == 0
    assert value(m, "harvest_symbols", state="stale_marketstate") == 1
    # the stale symbol comes back
    m.on_publish(publish("ETHUSDT", "NONE"))
    assert value(m, "harvest_symbols", state="stale_marketstate") == 0
    assert value(m, "harvest_symbols", state="published") == 1


def test_per_symbol_series_only_below_the_cap() -> None:
    m = Metrics(symbol_cap=2, process_metrics=False)
    for sym in ("A", "B", "C"):
        m.on_publish(publish(sym))
    assert m.per_symbol == {"A", "B"}
    assert value(m, "harvest_symbol_kill_score", symbol="C") is None
    # the aggregate series still count every symbol
    assert value(m, "harvest_symbols", state="published") == 3
    assert (
        sum(
            value(m, "harvest_publishes_total", trigger="change", action=a) or 0
            for a in ACTION_CODES
        )
        == 3
    )
    # a retraction frees a slot; the next publishing symbol takes it
    m.on_retract(RetractOut("A", "no_position: position key is absent", 5, T0))
    m.on_publish(publish("C"))
    assert m.per_symbol == {"B", "C"}
    assert value(m, "harvest_symbol_kill_score", symbol="C") == 0.55
    assert value(m, "harvest_symbol_kill_score", symbol="A") is None

    zero = Metrics(symbol_cap=0, process_metrics=False)
    zero.on_publish(publish("A"))
    assert zero.per_symbol == frozenset()
    assert b'harvest_symbol_kill_score{symbol="A"}' not in generate_latest(zero.registry)


def test_runner_hooks_and_engine_errors() -> None:
    m = Metrics(process_metrics=False)
    for kind in ("position", "position", "marketstate", "stream"):
        m.on_event(kind)
    m.on_resync("startup")
    m.on_resync("resubscribed")
    m.on_resync("resubscribed")
    m.on_latency(0.004)
    m.on_compute(2e-6)
    m.on_cycle(17)
    m.on_invalid("X", "invalid_marketstate")
    assert value(m, "harvest_input_events_total", kind="position") == 2
    assert value(m, "harvest_input_events_total", kind="stream") == 1
    assert value(m, "harvest_resyncs_total", reason="resubscribed") == 2
    assert value(m, "harvest_reconnects_total") == 2
    assert value(m, "harvest_event_to_publish_latency_seconds_count") == 1
    assert value(m, "harvest_event_to_publish_latency_seconds_bucket", le="0.005") == 1
    assert value(m, "harvest_event_to_publish_latency_seconds_bucket", le="0.0025") == 0
    assert value(m, "harvest_compute_seconds_count") == 1
    assert value(m, "harvest_tracked_symbols") == 17
    assert value(m, "harvest_invalid_inputs_total", reason="invalid_marketstate") == 1


def test_configuration_gauges_carry_the_real_tunables() -> None:
    m = Metrics(theta=Theta(), floor_sec=10, heartbeat_sec=60, process_metrics=False)
    weights = {
        c: value(m, "harvest_kill_weight", component=c)
        for c in ("regime_flip", "sigma_spike", "ts_drop", "age_penalty")
    }
    assert weights == {"regime_flip": 1.0, "sigma_spike": 0.5, "ts_drop": 0.5, "age_penalty": 0.3}
    assert value(m, "harvest_kill_threshold") == 0.6
    assert [value(m, "harvest_ladder_trigger_r", tranche=t) for t in "123"] == [2.0, 4.0, 6.0]
    assert value(m, "harvest_heartbeat_seconds") == 60
    assert value(m, "harvest_floor_seconds") == 10
    custom = Metrics(theta=Theta(kill_threshold=0.7, k_age_penalty=0.1), process_metrics=False)
    assert value(custom, "harvest_kill_threshold") == 0.7
    assert value(custom, "harvest_kill_weight", component="age_penalty") == 0.1


def test_every_listed_family_is_exposed_and_the_global_registry_is_untouched() -> None:
    before = {m.name for m in REGISTRY.collect()}
    m = Metrics(process_metrics=True)
    m.on_publish(publish("A"))
    text = generate_latest(m.registry).decode()
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in text, name
    assert "process_start_time_seconds" in text
    assert {m.name for m in REGISTRY.collect()} == before


def test_combine_fans_out_to_the_callers_observer_and_hooks() -> None:
    m = Metrics(process_metrics=False)
    other = Metrics(process_metrics=False)
    obs, hooks = combine(m, other, other)
    obs.on_publish(publish("A"))
    hooks.on_event("risk")
    for target in (m, other):
        assert value(target, "harvest_publishes_total", trigger="change", action="NONE") == 1
        assert value(target, "harvest_input_events_total", kind="risk") == 1
    alone_obs, alone_hooks = combine(m, None, None)
    assert alone_obs is m
    assert alone_hooks is m


def test_serve_metrics_binds_loopback_and_stops_cleanly() -> None:
    m = Metrics(process_metrics=False)
    m.on_cycle(3)
    server = serve_metrics(m.registry, 0)  # port 0: the OS picks one
    try:
        assert server.addr == "127.0.0.1"
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read()
        assert b"harvest_tracked_symbols 3.0" in body
    finally:
        server.stop()


@pytest.mark.parametrize("reason", ["", ":", "  : x"])
def test_odd_reasons_get_a_label(reason: str) -> None:
    m = Metrics(process_metrics=False)
    m.on_retract(RetractOut("A", reason, 1, T0))
    assert value(m, "harvest_retractions_total", reason="unknown") == 1
