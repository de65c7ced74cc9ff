"""`harvest-async replay` on the command line: outputs, formats, errors, determinism."""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harvest_async.cli import main as cli
from harvest_async.replay.timeline import CSV_COLUMNS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "recordings"
S1 = EXAMPLES / "s1_increasing_pnl.jsonl"
S2 = EXAMPLES / "s2_regime_flip.jsonl"
SESSION = EXAMPLES / "simulated_session.jsonl.gz"

# settings that would change decisions if a developer's shell had them set
_VARS = (
    "PUBLISH_INTERVAL_SEC",
    "MAX_PUBLISH_AGE_SEC",
    "CHANGE_EPS_PCT",
    "R_EPS",
    "MAX_INPUT_AGE_SEC",
    "MAX_CLOCK_SKEW_SEC",
    "POSITION_SOURCE",
    "SYMBOLS",
    "FALLBACK_STOP_PCT",
    "LOG_LEVEL",
)

Run = Callable[..., tuple[int, bytes, str]]


@pytest.fixture
def run(
    monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> Iterator[Run]:
    for var in list(os.environ):
        if var.startswith("THETA_") or var in _VARS:
            monkeypatch.delenv(var)
    root = logging.getLogger()
    saved = root.handlers[:], root.level

    def invoke(*argv: str) -> tuple[int, bytes, str]:
        code = cli.main(list(argv))
        out, err = capsysbinary.readouterr()
        return code, out, err.decode()

    yield invoke
    root.handlers[:], level = saved
    root.setLevel(level)


def test_replay_to_stdout_is_the_expected_timeline(run: Run) -> None:
    code, out, err = run("replay", str(S1))
    assert code == 0
    assert out == (EXAMPLES / "s1_increasing_pnl.expected.jsonl").read_bytes()
    assert "replayed 4 changes" in err and "7 publishes" in err


def test_csv_has_the_same_entries(run: Run, tmp_path: Path) -> None:
    out = tmp_path / "t.csv"
    code, stdout, _ = run("replay", str(S1), "--format", "csv", "--out", str(out))
    assert code == 0 and stdout == b""
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert tuple(rows[0]) == CSV_COLUMNS
    text = (EXAMPLES / "s1_increasing_pnl.expected.jsonl").read_text()
    expected = [json.loads(line) for line in text.splitlines()]
    assert len(rows) == len(expected)
    for row, entry in zip(rows, expected, strict=True):
        assert {k: v for k, v in row.items() if k in entry} == entry


def test_gzip_output(run: Run, tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl.gz"
    assert run("replay", str(SESSION), "--out", str(out))[0] == 0
    expected = gzip.decompress((EXAMPLES / "simulated_session.expected.jsonl.gz").read_bytes())
    assert gzip.decompress(out.read_bytes()) == expected


def test_two_runs_in_fresh_processes_are_byte_identical(tmp_path: Path) -> None:
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / f"run{seed}.jsonl"
        env = {k: v for k, v in os.environ.items() if not k.startswith("THETA_") and k not in _VARS}
        env["PYTHONHASHSEED"] = seed  # set/dict order must not leak into the output
        subprocess.run(
            [sys.executable, "-m", "harvest_async", "replay", str(SESSION), "--out", str(out)],
            check=True,
            env=env,
            capture_output=True,
        )
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) > 1_000_000


def _corrupt_copy(tmp_path: Path, lineno: int, text: bytes) -> Path:
    lines = gzip.decompress(SESSION.read_bytes()).splitlines()
    lines[lineno - 1] = text
    path = tmp_path / "broken.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    return path


def test_a_corrupt_line_fails_with_its_number_and_leaves_no_output(
    run: Run, tmp_path: Path
) -> None:
    broken = _corrupt_copy(tmp_path, 7000, b'{"op":"set","at":1767227933.0,"kind":')
    out = tmp_path / "timeline.jsonl"
    code, _, err = run("replay", str(broken), "--out", str(out))
    assert code == 1
    assert f"{broken}:7000:" in err and "cut short" in err
    assert "timeline.jsonl was not written" in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.jsonl.gz"]  # no .partial


def test_a_corrupt_line_on_stdout_says_the_output_is_incomplete(run: Run, tmp_path: Path) -> None:
    broken = _corrupt_copy(tmp_path, 300, b"garbage")
    code, _, err = run("replay", str(broken))
    assert code == 1
    assert ":300:" in err and "incomplete" in err


def test_newer_format_is_refused(run: Run, tmp_path: Path) -> None:
    lines = S1.read_bytes().splitlines()
    lines[0] = lines[0].replace(b'"version":1', b'"version":7')
    path = tmp_path / "future.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    code, stdout, err = run("replay", str(path), "--out", str(tmp_path / "t.jsonl"))
    assert code == 1 and stdout == b""
    assert "version 7 is newer than this harvest-async supports" in err
    assert not (tmp_path / "t.jsonl").exists()


def test_usage_errors(run: Run, tmp_path: Path) -> None:
    assert run("replay", str(tmp_path / "missing.jsonl"))[0] == 2
    code, _, err = run("replay", str(S1), "--format", "text")
    assert code == 2 and "--compare" in err
    code, _, err = run("replay", str(S1), "--compare", str(S1), "--into", "redis://x")
    assert code == 2
    code, _, err = run("replay", str(S1), "--into", "http://localhost")
    assert code == 2 and "--into must be" in err
    with pytest.raises(SystemExit) as info:
        run("replay", str(S1), "--into", "redis://x", "--speed", "-1")
    assert info.value.code == 2


def test_settings_come_from_env_file_and_flags(run: Run, tmp_path: Path) -> None:
    env_file = tmp_path / "harvest.env"
    env_file.write_text("PUBLISH_INTERVAL_SEC=0\nMAX_PUBLISH_AGE_SEC=45\n")
    code, out, _ = run("replay", str(S1), "--env-file", str(env_file))
    times = [float(json.loads(line)["ts_epoch"]) for line in out.splitlines()]
    assert code == 0 and len(times) == 7 and times[3] == 1767225663.0
    code, out2, _ = run("replay", str(S1), "--env-file", str(env_file), "--publish-interval", "10")
    assert [float(json.loads(line)["ts_epoch"]) for line in out2.splitlines()][3] == 1767225670.0


def test_theta_file(run: Run, tmp_path: Path) -> None:
    theta = tmp_path / "theta.toml"
    theta.write_text("kill_threshold = 0.8\n")
    code, out, _ = run("replay", str(S2), "--theta", str(theta))
    assert code == 0
    assert {json.loads(line)["harvest_action"] for line in out.splitlines()} == {"NONE"}
    code, _, err = run("replay", str(S2), "--theta", str(tmp_path / "nope.toml"))
    assert code == 2 and "THETA_FILE" in err


def test_compare_text_and_jsonl(run: Run, tmp_path: Path) -> None:
    theta = tmp_path / "b.json"
    theta.write_text('{"kill_threshold": 0.8}')
    code, out, _ = run("replay", str(S2), "--compare", str(theta))
    text = out.decode()
    assert code == 0
    assert "B = " in text and "kill_threshold=0.8" in text
    assert "BTCUSDT: differs" in text
    assert "only A proposed: FULL_CLOSE_PROPOSED" in text
    assert "first divergence at +30.000 s" in text
    assert "1 of 1 symbols decide differently" in text
    code, out, _ = run("replay", str(S2), "--compare", str(theta), "--format", "jsonl")
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row["symbol"] == "BTCUSDT" and row["only_a"] == ["FULL_CLOSE_PROPOSED"]
    assert row["first_divergence"]["offset_sec"] == 30.0
    bad = tmp_path / "bad.json"
    bad.write_text('{"no_such_tunable": 1}')
    assert run("replay", str(S2), "--compare", str(bad))[0] == 2


def test_progress_bar_only_on_request_or_a_terminal(run: Run) -> None:
    _, out, err = run("replay", str(S1))
    assert "[" not in err  # stderr is not a terminal here
    _, out2, err = run("replay", str(S1), "--progress")
    assert out2 == out  # the bar never touches stdout
    assert "s1_increasing_pnl.jsonl [" in err and "100%" in err
