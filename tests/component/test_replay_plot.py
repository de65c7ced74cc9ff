"""`harvest-async plot`: timelines as pictures (matplotlib is an optional extra)."""

from __future__ import annotations

import builtins
import importlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harvest_async.cli import main as cli
from harvest_async.config import engine_config, settings_from_env
from harvest_async.replay import plot as plot_mod
from harvest_async.replay.recording_writer import write_recording
from harvest_async.replay.timeline import replay_to_file
from harvest_async.tools.simulate import Simulator, symbols_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "recordings"
T0 = 1_767_225_600.0


@pytest.fixture
def no_logging_changes() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:], level = saved
    root.setLevel(level)


def test_load_timeline_jsonl_and_csv(tmp_path: Path) -> None:
    rec = EXAMPLES / "s8_no_risk_proposal.jsonl"
    config = engine_config(settings_from_env({}))
    replay_to_file(rec, config, str(tmp_path / "t.csv"), fmt="csv", show_progress=False)
    a = plot_mod.load_timeline(str(EXAMPLES / "s8_no_risk_proposal.expected.jsonl"))
    b = plot_mod.load_timeline(str(tmp_path / "t.csv"))
    assert a == b
    s = a["BTCUSDT"]
    assert s.actions == ["PARTIAL_25", "PARTIAL_50", "PARTIAL_25", "PARTIAL_25"]
    assert s.new_sl == [100.2] * 4


def test_load_timeline_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"event":"publish","symbol":"X","ts_epoch":"1"}\n')
    with pytest.raises(plot_mod.TimelineError, match=r"bad.jsonl:1:"):
        plot_mod.load_timeline(str(bad))
    bad.write_text("nope\n")
    with pytest.raises(plot_mod.TimelineError, match=r"bad.jsonl:1:"):
        plot_mod.load_timeline(str(bad))


def test_missing_matplotlib_gives_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.import_module

    def fake(name: str, package: str | None = None) -> Any:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real(name, package)

    monkeypatch.setattr(plot_mod.importlib, "import_module", fake)
    timeline = EXAMPLES / "s2_regime_flip.expected.jsonl"
    code = cli.main(["plot", str(timeline), "-o", str(tmp_path / "x.png")])
    assert code == 1
    assert "pip install 'harvest-async[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_plot_module_does_not_import_matplotlib_at_import_time() -> None:
    assert "import matplotlib" not in (ROOT / "harvest_async" / "replay" / "plot.py").read_text()
    assert builtins  # (the module imports it with importlib only when drawing)


mpl = pytest.importorskip  # alias for readability below


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot_scenario(tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]) -> None:
    mpl("matplotlib")
    out = tmp_path / f"s7{suffix}"
    code = cli.main(["plot", str(EXAMPLES / "s7_profit_lock.expected.jsonl"), "-o", str(out)])
    assert code == 0
    assert "plotted 2 symbol(s)" in capsys.readouterr().out
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in data[:500]


@pytest.mark.slow
def test_plot_twenty_symbols_and_a_selection(tmp_path: Path) -> None:
    mpl("matplotlib")
    sim = Simulator(symbols_for(20), seed=5, start=T0)
    rec = tmp_path / "twenty.jsonl"

    def changes() -> Any:
        for k in range(1, 1201):
            yield from sim.advance(T0 + k / 2, 1)

    write_recording(rec, start=T0, initial=sim.initial(), changes=changes(), end_at=T0 + 600)
    timeline = tmp_path / "twenty.expected.jsonl"
    replay_to_file(rec, engine_config(settings_from_env({})), str(timeline), show_progress=False)
    series = plot_mod.load_timeline(str(timeline))
    drawn = plot_mod.plot_timeline(series, str(tmp_path / "all.png"))
    assert len(drawn) == len(series) >= 15
    assert (tmp_path / "all.png").stat().st_size > 50_000
    two = plot_mod.plot_timeline(series, str(tmp_path / "two.png"), symbols=["ETHUSDT", "BTCUSDT"])
    assert two == ["ETHUSDT", "BTCUSDT"]


def test_plot_cli_defaults_and_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_logging_changes: None
) -> None:
    mpl("matplotlib")
    timeline = tmp_path / "s1.expected.jsonl"
    timeline.write_bytes((EXAMPLES / "s1_increasing_pnl.expected.jsonl").read_bytes())
    assert cli.main(["plot", str(timeline), "--symbols", "BTCUSDT"]) == 0
    assert (tmp_path / "s1.expected.png").exists()  # TIMELINE with .png
    assert cli.main(["plot", str(timeline), "-o", str(tmp_path / "x.gif")]) == 2
    assert cli.main(["plot", str(timeline), "--symbols", "NOPE"]) == 2
    assert "not in the timeline: NOPE" in capsys.readouterr().err
    theta = tmp_path / "theta.toml"
    theta.write_text("T1_R = 1.0\n")
    assert cli.main(["plot", str(timeline), "--theta", str(theta)]) == 0
    assert cli.main(["plot", str(tmp_path / "missing.jsonl")]) == 1
    assert os.path.exists(tmp_path / "s1.expected.png")
