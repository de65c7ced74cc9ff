"""`replay --jobs N`: the symbols split over N processes give the very same timeline, byte
for byte, as one process (each symbol's decisions depend on its own inputs alone)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from harvest_async.cli.main import main
from harvest_async.config import engine_config, settings_from_env
from harvest_async.core.partition import partition_of
from harvest_async.replay.format import FORMAT, VERSION, Header, SymbolState
from harvest_async.replay.recording_writer import RecordingWriter, write_recording
from harvest_async.replay.timeline import replay_to_file
from harvest_async.tools.simulate import InputWrite, Simulator, symbols_for

T0 = 1_767_225_600.0
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "recordings"


def _session(path: Path, *, symbols: int, seconds: int, rate: int, gap_at: int | None) -> None:
    """More symbols than one fetch chunk (250), several changes per instant, and with
    `gap_at` a recorded gap (a snapshot line: a full resync) in the middle."""
    sim = Simulator(symbols_for(symbols), seed=7, start=T0)
    initial = sim.initial()
    state: dict[str, SymbolState] = {}

    def track(w: InputWrite) -> InputWrite:
        row = state.setdefault(w.symbol, SymbolState())
        setattr(row, w.kind, dict(w.fields) if w.op == "set" else None)
        return w

    def changes() -> Iterator[InputWrite]:
        for k in range(1, seconds * 5 + 1):
            yield from sim.advance(T0 + k / 5, rate // 5)

    for w in initial:
        track(w)
    if gap_at is None:
        write_recording(path, start=T0, initial=initial, changes=changes(), end_at=T0 + seconds)
        return
    header = Header(format=FORMAT, version=VERSION, start=T0, snapshot=dict(state))
    writer = RecordingWriter(path, header)
    snapped = False
    for w in changes():
        if not snapped and w.at >= T0 + gap_at:
            writer.snapshot(w.at, "gap", {s: msgspec.structs.replace(r) for s, r in state.items()})
            snapped = True
        track(w)
        if w.op == "delete":
            writer.delete(w.at, w.kind, w.symbol)  # type: ignore[arg-type]
        else:
            writer.set(w.at, w.kind, w.symbol, dict(w.fields))  # type: ignore[arg-type]
    writer.close(end_at=T0 + seconds)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jobs") / "big.jsonl"
    _session(path, symbols=600, seconds=150, rate=200, gap_at=None)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("jobs", [2, 3])
def test_jobs_write_the_same_bytes_as_one_process(
    big: Path, tmp_path: Path, jobs: int, fmt: str
) -> None:
    config = engine_config(settings_from_env({"PUBLISH_INTERVAL_SEC": "2"}))
    one = tmp_path / f"one.{fmt}"
    many = tmp_path / f"many.{fmt}"
    stats_one = replay_to_file(big, config, str(one), fmt=fmt, show_progress=False)
    stats_many = replay_to_file(big, config, str(many), fmt=fmt, show_progress=False, jobs=jobs)
    assert stats_one.outputs > 1000  # a real workload, over more than one fetch chunk
    assert many.read_bytes() == one.read_bytes()
    assert (stats_many.changes, stats_many.publishes, stats_many.retracts, stats_many.symbols) == (
        stats_one.changes,
        stats_one.publishes,
        stats_one.retracts,
        stats_one.symbols,
    )


def test_jobs_agree_across_a_recorded_gap_and_on_the_shipped_session(tmp_path: Path) -> None:
    gap = tmp_path / "gap.jsonl"
    _session(gap, symbols=300, seconds=90, rate=100, gap_at=40)
    config = engine_config(settings_from_env({}))
    for recording in (gap, EXAMPLES / "simulated_session.jsonl.gz"):
        one = tmp_path / "one.jsonl"
        many = tmp_path / "many.jsonl"
        replay_to_file(recording, config, str(one), show_progress=False)
        replay_to_file(recording, config, str(many), show_progress=False, jobs=2)
        assert many.read_bytes() == one.read_bytes(), recording.name


def test_the_cli_takes_jobs(big: Path, tmp_path: Path) -> None:
    out1, out2 = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["replay", str(big), "-o", str(out1), "--no-progress"]) == 0
    assert main(["replay", str(big), "-o", str(out2), "--jobs", "2", "--no-progress"]) == 0
    assert out1.read_bytes() == out2.read_bytes()


def test_partitions_are_stable_and_spread() -> None:
    # the same name, the same partition: on every host and Python (never salted hash())
    assert partition_of("BTCUSDT", 64) == partition_of("BTCUSDT", 64)
    counts = [0] * 8
    for symbol in symbols_for(4000):
        counts[partition_of(symbol, 8)] += 1
    assert min(counts) > 4000 / 8 * 0.8
