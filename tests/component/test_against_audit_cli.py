"""`replay --against-audit FILE` and the stream-history flags on the command line, without
a server: the shipped recordings replay to their expected timelines, which have the audit
stream's shape, so they stand in for an exported audit. (Against a live service and its
stream: tests/integration/test_stream_history.py.)"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from harvest_async.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "recordings"
SESSION = EXAMPLES / "simulated_session.jsonl.gz"
EXPECTED = EXAMPLES / "simulated_session.expected.jsonl.gz"
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
    "STREAM_NAME",
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


def expected_rows() -> list[dict[str, str]]:
    return [msgspec.json.decode(x) for x in gzip.decompress(EXPECTED.read_bytes()).splitlines()]


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in rows))
    return path


def test_a_replay_agrees_with_its_own_timeline(run: Run) -> None:
    code, out, err = run("replay", str(SESSION), "--against-audit", str(EXPECTED))
    text = out.decode()
    assert code == 0, text + err
    assert "decisions = material publishes and retractions (heartbeats excluded)" in text
    assert "tolerance 10 s" in text  # the default floor
    assert text.endswith("agree: 12 symbols, the same decisions\n")


def test_a_changed_and_a_missing_decision_are_found(run: Run, tmp_path: Path) -> None:
    rows = expected_rows()
    changes = [
        i
        for i, r in enumerate(rows)
        if r["event"] == "publish" and r["trigger"] == "change" and r["symbol"] == "BTCUSDT"
    ]
    removed = rows[changes[3]]
    altered = dict(rows[changes[6]], harvest_action="PARTIAL_75")
    planted = [r for i, r in enumerate(rows) if i != changes[3]]
    planted[planted.index(rows[changes[6]])] = altered
    audit = write_rows(tmp_path / "audit.jsonl", planted)
    code, out, _ = run("replay", str(SESSION), "--against-audit", str(audit), "--format", "jsonl")
    assert code == 1
    lines = [msgspec.json.decode(x) for x in out.splitlines()]
    found = [x for x in lines if x["type"] == "difference"]
    assert [(d["kind"], d["symbol"], d["detail"]) for d in found] == [
        ("only_replay", "BTCUSDT", ""),
        ("differs", "BTCUSDT", "action"),
    ]
    assert found[0]["replay"]["plan_id"] == removed["plan_id"]
    assert found[1]["replay"]["action"] == "FULL_CLOSE_PROPOSED"
    assert found[1]["audit"]["action"] == "PARTIAL_75"
    assert found[1]["audit"]["ref"] == f"{audit}:{changes[6]}"  # file:line when no id
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["agrees"] is False
    assert (summary["only_replay"], summary["differs"]) == (1, 1)


def test_stream_history_flags_are_checked_before_reading_anything(run: Run, tmp_path: Path) -> None:
    out = str(tmp_path / "r.jsonl")
    bad = "unix:///nonexistent/redis.sock"  # never reached: the arguments fail first
    since_until = ("--since", "1767225600", "--until", "1767225599")
    stream = ("record", "--out", out, "--from-streams", "s=risk")
    for argv, words in (
        (("record", "--out", out, "--since", "1"), "--since need --from-streams"),
        (("record", "--out", out, "--from-streams", "s=trades"), "unknown input kind"),
        (("record", "--out", out, "--from-streams", "s=risk", "--until", "soon"), "--until:"),
        ((*stream, "--snapshot-from", bad, "--until", "1"), "the window must end now"),
        (("record", "--out", out, "--from-streams", "s=risk", *since_until), "is before --since"),
        (("record", "--out", out, "--from-streams", "s=risk", "--duration", "5"), "--duration"),
        (("replay", str(SESSION), "--against-audit", "missing.jsonl"), "neither a redis://"),
        (
            ("replay", str(SESSION), "--against-audit", str(EXPECTED), "--compare", "x.toml"),
            "--compare and --against-audit cannot be combined",
        ),
        (
            ("replay", str(SESSION), "--against-audit", str(EXPECTED), "--format", "csv"),
            "text or jsonl",
        ),
        (("export-audit", "--since", "later"), "--since:"),
    ):
        code, _, err = run(*argv, "--redis-url", bad) if argv[0] != "replay" else run(*argv)
        assert code == 2, (argv, err)
        assert words in err, (argv, err)


def test_a_broken_audit_file_names_its_line(run: Run, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    audit.write_bytes(gzip.decompress(EXPECTED.read_bytes())[:5000] + b"\n{not json\n")
    code, _, err = run("replay", str(SESSION), "--against-audit", str(audit))
    assert code == 1
    assert f"{audit}:" in err and "malformed" in err.lower()
