"""Offline replay: shipped recordings, virtual time, and equality with the live runner.

The strongest check here drives the real `runner.Runner` (the live driver) on a FakeClock
from the same recording, with the shipped in-memory fakes (`harvest_async.testing`) as
its reader, sink and change source, and requires the replay's output to be identical:
the replay is the live engine driven the live way.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest

from harvest_async.config import engine_config, settings_from_env
from harvest_async.core.engine import Engine, EngineConfig
from harvest_async.core.gate import GateConfig
from harvest_async.core.input_hashes import SymbolInputs, trim
from harvest_async.core.ports import Output
from harvest_async.replay.compare import compare
from harvest_async.replay.format import (
    FORMAT,
    VERSION,
    Delete,
    End,
    Header,
    Line,
    Set,
    Snapshot,
    SymbolState,
)
from harvest_async.replay.recording_reader import read_all
from harvest_async.replay.recording_writer import RecordingWriter, write_recording
from harvest_async.replay.replayer import replay
from harvest_async.replay.timeline import replay_to_file
from harvest_async.service.runner import Runner
from harvest_async.testing import KINDS, FakeClock, ManualSource, MemorySink, MemoryStore
from harvest_async.tools.simulate import Simulator, symbols_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "recordings"
VECTORS = ROOT / "tests" / "data" / "kernel_vectors_public.json"
T0 = 1_767_225_600.0
SCENARIOS = sorted(p.name for p in EXAMPLES.glob("s*.jsonl") if ".expected." not in p.name)
SHIPPED = [*SCENARIOS, "simulated_session.jsonl.gz"]

DEFAULTS = engine_config(settings_from_env({}))


def expected_path(name: str) -> Path:
    if name.endswith(".jsonl.gz"):
        return EXAMPLES / (name.removesuffix(".jsonl.gz") + ".expected.jsonl.gz")
    return EXAMPLES / (name.removesuffix(".jsonl") + ".expected.jsonl")


def read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def audit(path: Path, config: EngineConfig = DEFAULTS) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    replay(path, config, lambda outs: rows.extend(o.audit_fields() for o in outs))
    return rows


def load_make_scenarios() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_scenarios", EXAMPLES / "make_scenarios.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- shipped recordings -------------------------------------------------------------------


def test_the_eight_scenarios_and_the_session_are_shipped() -> None:
    assert len(SCENARIOS) == 8
    for name in SHIPPED:
        assert (EXAMPLES / name).is_file()
        assert expected_path(name).is_file()
    assert (EXAMPLES / "simulated_session.jsonl.gz").stat().st_size < 3_000_000


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recording_reproduces_its_expected_timeline(name: str, tmp_path: Path) -> None:
    out = tmp_path / ("out.jsonl.gz" if name.endswith(".gz") else "out.jsonl")
    stats = replay_to_file(EXAMPLES / name, DEFAULTS, str(out), show_progress=False)
    assert stats.complete
    assert read_bytes(out) == read_bytes(expected_path(name)), (
        f"{name} no longer replays to {expected_path(name).name}. If the engine's behaviour "
        "changed on purpose, run `python examples/recordings/make_scenarios.py` and review "
        "the diff of the expected timelines"
    )


def test_make_scenarios_rebuilds_the_shipped_files(tmp_path: Path) -> None:
    module = load_make_scenarios()
    module.build(tmp_path)
    built = sorted(p.name for p in tmp_path.iterdir())
    shipped = sorted(p.name for p in EXAMPLES.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
    assert built == shipped
    for name in built:
        assert read_bytes(tmp_path / name) == read_bytes(EXAMPLES / name), (
            f"{name} differs from what make_scenarios.py builds now (simulator or engine "
            "changed?): run `python examples/recordings/make_scenarios.py` and review the diff"
        )


def _vectors() -> dict[str, dict[str, Any]]:
    cases = json.loads(VECTORS.read_text())
    return {
        c["name"].split("::", 1)[1]: c["expected"]
        for c in cases
        if c["name"].startswith("upstream_replay::")
    }


# scenario file -> [(symbol, seconds after start, vector name)]
SCENARIO_VECTORS = {
    "s1_increasing_pnl": [
        ("BTCUSDT", 0, "s1_increasing_pnl_1.0"),
        ("BTCUSDT", 30, "s1_increasing_pnl_5.0"),
        ("BTCUSDT", 60, "s1_increasing_pnl_9.0"),
        ("BTCUSDT", 100, "s1_increasing_pnl_14.0"),
    ],
    "s2_regime_flip": [
        ("BTCUSDT", 0, "s2_regime_before_trend"),
        ("BTCUSDT", 30, "s2_regime_after_chop"),
    ],
    "s3_volatility_spike": [("BTCUSDT", 0, "s3_vol_normal"), ("BTCUSDT", 30, "s3_vol_spike")],
    "s4_trend_collapse": [("BTCUSDT", 0, "s4_ts_strong"), ("BTCUSDT", 30, "s4_ts_weak")],
    "s5_aging": [("BTCUSDT", 0, "s5_age_young_1h"), ("BTCUSDT", 30, "s5_age_old_100000s")],
    "s6_perfect_storm": [("BTCUSDT", 30, "s6_perfect_storm")],
    "s7_profit_lock": [
        ("BTCUSDT", 30, "s7_profit_lock_long"),
        ("ETHUSDT", 30, "s7_profit_lock_short"),
    ],
    "s8_no_risk_proposal": [("BTCUSDT", 0, "s8_no_p1_fallback")],
}


@pytest.mark.parametrize("scenario", sorted(SCENARIO_VECTORS))
def test_scenario_decisions_equal_the_original_replay_vectors(scenario: str) -> None:
    vectors = _vectors()
    rows = audit(EXAMPLES / f"{scenario}.jsonl")
    for symbol, offset, vector in SCENARIO_VECTORS[scenario]:
        (row,) = [r for r in rows if r["symbol"] == symbol and float(r["ts_epoch"]) == T0 + offset]
        want = vectors[vector]
        assert row["harvest_action"] == want["harvest_action"], vector
        assert float(row["R_net"]) == want["R_net"], vector
        assert float(row["kill_score"]) == want["kill_score"], vector
        sl = want["new_sl_proposed"]
        assert row["new_sl_proposed"] == ("None" if sl is None else repr(sl)), vector
        assert row["reason_codes"] == ",".join(want["reason_codes"]), vector


def test_floor_trailing_edge_and_heartbeats_happen_in_virtual_time() -> None:
    rows = audit(EXAMPLES / "s1_increasing_pnl.jsonl")
    timeline = [(float(r["ts_epoch"]) - T0, r["trigger"], r["harvest_action"]) for r in rows]
    assert timeline == [
        (0.0, "startup", "NONE"),
        (30.0, "change", "PARTIAL_25"),
        (60.0, "change", "PARTIAL_50"),
        (70.0, "change", "PARTIAL_50"),  # the +63 s tick, at the floor's trailing edge
        (100.0, "change", "PARTIAL_75"),
        (160.0, "heartbeat", "PARTIAL_75"),
        (220.0, "heartbeat", "PARTIAL_75"),  # at the end marker: included
    ]
    assert rows[3]["R_net"] == "4.55"  # the latest state, coalesced
    assert rows[5]["plan_id"] == rows[4]["plan_id"]  # a heartbeat keeps the plan


def test_replay_applies_the_service_settings() -> None:
    env = {"PUBLISH_INTERVAL_SEC": "0", "MAX_PUBLISH_AGE_SEC": "45"}
    rows = audit(EXAMPLES / "s1_increasing_pnl.jsonl", engine_config(settings_from_env(env)))
    times = [float(r["ts_epoch"]) - T0 for r in rows]
    # no floor: the +63 s tick is published at once; heartbeats every 45 s after +100 s
    assert times == [0.0, 30.0, 60.0, 63.0, 100.0, 145.0, 190.0]


def test_symbols_setting_filters() -> None:
    config = engine_config(settings_from_env({"SYMBOLS": "ETHUSDT"}))
    rows = audit(EXAMPLES / "s7_profit_lock.jsonl", config)
    assert {r["symbol"] for r in rows} == {"ETHUSDT"}


def test_tunables_change_the_decisions() -> None:
    config = engine_config(settings_from_env({"THETA_KILL_THRESHOLD": "0.8"}))
    rows = audit(EXAMPLES / "s2_regime_flip.jsonl", config)
    assert {r["harvest_action"] for r in rows} == {"NONE"}  # K 0.73 no longer kills


def test_compare_reports_the_first_divergence_and_one_sided_actions() -> None:
    config_b = msgspec.structs.replace(
        DEFAULTS, theta=msgspec.structs.replace(DEFAULTS.theta, kill_threshold=0.8)
    )
    rows, _ = compare(EXAMPLES / "s2_regime_flip.jsonl", DEFAULTS, config_b)
    (row,) = rows
    assert row.symbol == "BTCUSDT" and row.differs
    assert row.only_a == ["FULL_CLOSE_PROPOSED"] and row.only_b == []
    assert row.actions["NONE"] == (1, 2)
    div = row.first_divergence
    assert div is not None and div["offset_sec"] == 30.0 and div["index"] == 1
    assert div["a"].startswith("FULL_CLOSE_PROPOSED") and div["b"].startswith("NONE")
    same, _ = compare(EXAMPLES / "s2_regime_flip.jsonl", DEFAULTS, DEFAULTS)
    assert not any(r.differs for r in same)


# -- gap snapshots --------------------------------------------------------------------------

MS = {"sigma": "0.01", "ts": "0.4", "p_trend": "0.6", "p_mr": "0.2", "p_chop": "0.2"}


def pos(pnl: float) -> dict[str, str]:
    return {
        "side": "LONG",
        "entry_price": "100",
        "unrealized_pnl": repr(pnl),
        "quantity": "1",
        "age_sec": "60",
    }


def gap_recording(path: Path) -> None:
    """BTC and ETH open; a gap snapshot at +30 s has BTC gone, ETH changed, SOL new."""
    head = Header(
        format=FORMAT,
        version=VERSION,
        start=T0,
        snapshot={
            "BTCUSDT": SymbolState(marketstate=MS, position=pos(1.0)),
            "ETHUSDT": SymbolState(marketstate=MS, position=pos(1.0)),
        },
    )
    w = RecordingWriter(path, head)
    if True:
        w.set(T0 + 12, "position", "ETHUSDT", pos(2.0))
        w.snapshot(
            T0 + 30,
            "resubscribed",
            {
                "ETHUSDT": SymbolState(marketstate=MS, position=pos(5.0)),
                "SOLUSDT": SymbolState(marketstate=MS, position=pos(9.0)),
            },
        )
        w.set(T0 + 31, "position", "SOLUSDT", pos(9.5))
    w.close(end_at=T0 + 60)


def test_a_gap_snapshot_is_a_full_resync(tmp_path: Path) -> None:
    path = tmp_path / "gap.jsonl"
    gap_recording(path)
    rows = audit(path)
    summary = [
        (float(r["ts_epoch"]) - T0, r["symbol"], r["event"], r.get("harvest_action", ""))
        for r in rows
    ]
    assert summary == [
        (0.0, "BTCUSDT", "publish", "NONE"),
        (0.0, "ETHUSDT", "publish", "NONE"),
        (12.0, "ETHUSDT", "publish", "NONE"),  # R 0.95: material (R moved 0.5)
        (30.0, "BTCUSDT", "retract", ""),  # gone in the snapshot
        (30.0, "ETHUSDT", "publish", "PARTIAL_25"),
        (30.0, "SOLUSDT", "publish", "PARTIAL_50"),
        (40.0, "SOLUSDT", "publish", "PARTIAL_50"),  # +31 s tick at the trailing edge
    ]
    assert rows[3]["reason"].startswith("no_position")


# -- the live runner on a FakeClock, from the same recording --------------------------------


def _inputs(state: dict[str, SymbolState], allowed: frozenset[str] | None) -> list[SymbolInputs]:
    """A recorded state as the service reads it (only the fields it uses)."""
    out = []
    for symbol, hashes in state.items():
        if allowed is not None and symbol not in allowed:
            continue
        row = [trim(k, f) if (f := hashes.get(k)) else None for k in KINDS]
        if row != [None, None, None]:
            out.append(SymbolInputs(symbol, *row))
    return out


async def live_runner_outputs(path: Path, config: EngineConfig) -> list[dict[str, str]]:
    """What `runner.Runner` publishes for this recording, driven on a FakeClock."""
    head, lines = read_all(path)
    allowed = frozenset(config.symbols) if config.symbols is not None else None
    clock = FakeClock(head.start)
    store = MemoryStore(_inputs(head.snapshot, allowed))
    sink = MemorySink(store)
    engine = Engine(config)
    runner = Runner(
        engine,
        store,
        sink,
        clock,
        symbols=config.symbols,
        reconcile_every=config.gate.heartbeat_sec,
    )
    source = ManualSource()

    async def run_timers(limit: float, inclusive: bool) -> None:
        while True:
            at = runner.rounds.wake_at()
            if at is None or at > limit or (at == limit and not inclusive):
                return
            clock.set(at)
            await runner.wait_idle()

    groups: list[list[Line]] = []
    for line in lines:
        if groups and groups[-1][0].at == line.at and not isinstance(line, Snapshot):
            groups[-1].append(line)
        else:
            groups.append([line])
    end = lines[-1].at
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run, source)
        for group in groups:
            at = group[0].at
            await run_timers(at, inclusive=False)
            clock.set(at)
            for line in group:
                if isinstance(line, Set | Delete):
                    if allowed is not None and line.symbol not in allowed:
                        continue
                    fields = trim(line.kind, line.fields) if isinstance(line, Set) else None
                    store.put(line.symbol, line.kind, fields)
                    source.changed(line.symbol, line.kind)
                elif isinstance(line, Snapshot):
                    store.inputs.clear()
                    for inputs in _inputs(line.state, allowed):
                        store.set_inputs(inputs)
                    source.gap(line.reason)
                else:
                    assert isinstance(line, End)
            await runner.wait_idle()
        await run_timers(end, inclusive=True)
        tg.cancel_scope.cancel()
    return sink.audit


def short_session(path: Path, *, symbols: int = 8, seconds: int = 400, rate: int = 2) -> None:
    sim = Simulator(symbols_for(symbols), seed=99, start=T0)

    def changes() -> Any:
        for k in range(1, seconds * rate + 1):
            # two changes per step sometimes share a symbol: one round, like one fetch
            yield from sim.advance(T0 + k / rate, 2 if k % 7 == 0 else 1)

    write_recording(path, start=T0, initial=sim.initial(), changes=changes(), end_at=T0 + seconds)


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"PUBLISH_INTERVAL_SEC": "3", "MAX_PUBLISH_AGE_SEC": "20", "MAX_INPUT_AGE_SEC": "45"},
        {"SYMBOLS": "BTCUSDT,SOLUSDT,NOPEUSDT", "PUBLISH_INTERVAL_SEC": "0"},
    ],
    ids=["defaults", "short-timers", "symbols"],
)
async def test_replay_equals_the_live_runner_on_a_fake_clock(
    tmp_path: Path, env: dict[str, str]
) -> None:
    path = tmp_path / "session.jsonl"
    short_session(path)
    config = engine_config(settings_from_env(env))
    live = await live_runner_outputs(path, config)
    offline = audit(path, config)
    assert len(offline) > 50
    assert offline == live


async def test_replay_equals_the_live_runner_across_a_gap(tmp_path: Path) -> None:
    path = tmp_path / "gap.jsonl"
    gap_recording(path)
    assert audit(path) == await live_runner_outputs(path, DEFAULTS)


def test_memory_is_bounded_by_symbols_not_changes(tmp_path: Path) -> None:
    """Closed positions are forgotten: the engine tracks what is alive, not history."""
    path = tmp_path / "churn.jsonl"
    initial: list[Any] = []
    changes = []
    sim_ms = {**MS, "ts_timestamp": str(int(T0))}
    for i in range(300):
        sym = f"S{i:03d}USDT"
        at = T0 + i
        changes.append(_W(at, "marketstate", sym, "set", sim_ms))
        changes.append(_W(at, "position", sym, "set", pos(1.0)))
        changes.append(_W(at + 0.5, "position", sym, "delete", {}))
        changes.append(_W(at + 0.5, "marketstate", sym, "delete", {}))
    write_recording(path, start=T0, initial=initial, changes=changes, end_at=T0 + 400)
    outputs: list[Output] = []
    engines: list[Engine] = []
    import harvest_async.replay.replayer as replay_mod

    original = replay_mod.Engine

    def spy(config: EngineConfig, observer: Any = None) -> Engine:
        engine = original(config, observer)
        engines.append(engine)
        return engine

    replay_mod.Engine = spy  # type: ignore[misc]
    try:
        no_floor = engine_config(settings_from_env({"PUBLISH_INTERVAL_SEC": "0"}))
        replay(path, no_floor, outputs.extend)
    finally:
        replay_mod.Engine = original  # type: ignore[misc]
    assert len(outputs) == 600  # a publish and a retract per symbol
    assert len(engines[0]) == 0


class _W(msgspec.Struct, frozen=True):
    at: float
    kind: str
    symbol: str
    op: str
    fields: dict[str, str]


def test_gate_config_reaches_the_engine() -> None:
    config = engine_config(settings_from_env({"CHANGE_EPS_PCT": "0.01", "R_EPS": "0.5"}))
    assert config.gate == GateConfig(floor_sec=10.0, heartbeat_sec=60.0, change_eps=0.01, r_eps=0.5)
