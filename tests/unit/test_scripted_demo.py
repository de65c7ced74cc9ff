"""The demo's scripted symbols tell their stories through the service's own engine and
publish rules (the demo's 1 s floor and 10 s heartbeat), on a virtual clock."""

from __future__ import annotations

from harvest_async.core import gate
from harvest_async.core.engine import Engine, EngineConfig, PublishOut, RetractOut
from harvest_async.core.input_hashes import SymbolInputs, trim
from harvest_async.tools.scripted import SCRIPTED, STEPS, STORIES, ScriptedSymbols

START = 1_700_000_000.0
STEP = 2.5


reason_codes: dict[str, str] = {}


def run_script(cycles: float) -> dict[str, list[str]]:
    """What the engine publishes for each scripted symbol, in order: the action (with the
    new SL when there is one), or `RETRACT <reason>`."""
    engine = Engine(
        EngineConfig(gate=gate.GateConfig(floor_sec=1.0, heartbeat_sec=10.0), symbols=SCRIPTED)
    )
    script = ScriptedSymbols(start=START)
    hashes: dict[tuple[str, str], dict[str, str] | None] = {}
    seen: dict[str, list[str]] = {sym: [] for sym in SCRIPTED}
    codes = reason_codes
    for step in range(int(cycles * STEPS)):
        now = START + step * STEP
        for write in script.writes(step, now):
            hashes[(write.kind, write.symbol)] = trim(write.kind, write.fields)
        outputs = []
        for sym in SCRIPTED:
            engine.observe(
                SymbolInputs(
                    sym,
                    hashes.get(("marketstate", sym)),
                    hashes.get(("risk", sym)),
                    hashes.get(("position", sym)),
                )
            )
            out = engine.evaluate(sym, now)
            if out is not None:
                outputs.append(out)
        engine.confirm(outputs)
        for out in outputs:
            if isinstance(out, PublishOut):
                sl = out.decision.new_sl_proposed
                seen[out.symbol].append(
                    out.decision.harvest_action + ("" if sl is None else f" SL={sl:g}")
                )
                if out.decision.harvest_action == "FULL_CLOSE_PROPOSED":
                    codes[out.symbol] = out.fields["reason_codes"]
            else:
                assert isinstance(out, RetractOut)
                seen[out.symbol].append(f"RETRACT {out.reason}")
    return seen


def test_each_scripted_symbol_tells_its_story() -> None:
    seen = run_script(cycles=1)
    assert seen["DEMO-LADDER"] == [
        "NONE", "PARTIAL_25 SL=100.2", "PARTIAL_50 SL=100.2", "PARTIAL_75 SL=100.2"
    ]  # fmt: skip
    # R 0.4 -> 1.2 is a material move (R_EPS); at 1.7 the stop moves; then it was moved
    assert seen["DEMO-LOCK"] == ["NONE", "NONE", "NONE SL=100.2", "NONE"]
    assert seen["DEMO-REGIME"] == ["PARTIAL_25 SL=100.2", "FULL_CLOSE_PROPOSED SL=100.2",
                                   "PARTIAL_25 SL=100.2"]  # fmt: skip
    assert reason_codes["DEMO-REGIME"] == (
        "harvest_partial_25,profit_lock,kill_score_triggered,regime_flip,sigma_spike,ts_drop"
    )
    assert seen["DEMO-CLOSE"] == [
        "NONE", "PARTIAL_25 SL=100.2", "RETRACT flat: position side is FLAT", "NONE"
    ]  # fmt: skip
    assert seen["DEMO-BADDATA"] == [
        "PARTIAL_25 SL=100.2",
        "RETRACT invalid_marketstate: sigma is not a number ('n/a')",
        "PARTIAL_25 SL=100.2",
        "RETRACT invalid_position: entry_price must be > 0 (0.0)",
        "PARTIAL_25 SL=100.2",
    ]


def test_the_script_cycles_and_every_story_is_told_again() -> None:
    first, twice = run_script(cycles=1), run_script(cycles=2)
    for sym in SCRIPTED:
        assert twice[sym][: len(first[sym])] == first[sym]
        assert len(twice[sym]) > len(first[sym]), sym  # the second cycle publishes again
    assert set(STORIES) == set(SCRIPTED)
