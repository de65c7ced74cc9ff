"""The service's logs: structured JSON fields, syslog priorities under journald, the
per-publish volume (summarised above a rate) and the DEBUG lines that say why a symbol
was not published. The engine is driven directly on explicit times; the lines are read
back from the stream `setup_logging` writes to."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harvest_async.core.engine import Engine, EngineConfig
from harvest_async.core.gate import GateConfig
from harvest_async.core.input_hashes import SymbolInputs
from harvest_async.core.ports import PublishOut
from harvest_async.service.logs import setup_logging
from harvest_async.service.publish_log import PublishLog

T0 = 1_700_000_000.0
MS = {"sigma": "0.01", "ts": "0.35", "p_trend": "0.5", "p_mr": "0.2", "p_chop": "0.3"}
RISK = {"stop_dist_pct": "0.02"}


def inputs(symbol: str, pnl: float = 1.0, **position: str) -> SymbolInputs:
    pos = {"side": "LONG", "entry_price": "100", "unrealized_pnl": repr(pnl), "quantity": "1"}
    return SymbolInputs(symbol, MS, RISK, {**pos, **position})


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def engine(observer: PublishLog, floor: float = 10.0) -> Engine:
    gate = GateConfig(floor_sec=floor, heartbeat_sec=60.0)
    e = Engine(EngineConfig(gate=gate), observer)
    e.starting = False
    return e


def step(e: Engine, symbol: str, now: float, pnl: float, **position: str) -> None:
    e.observe(inputs(symbol, pnl, **position))
    out = e.evaluate(symbol, now)
    if out is not None:
        e.confirm([out])


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# -- JSON fields -------------------------------------------------------------------------------
def test_json_lines_carry_the_decision_as_fields() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "json", instance="vps-1", stream=stream, environ={})
    e = engine(PublishLog(10.0))
    step(e, "BTCUSDT", T0, 5.0)  # PARTIAL_25
    step(e, "BTCUSDT", T0 + 1, 5.0, side="FLAT")  # retracted
    step(e, "BTCUSDT", T0 + 2, 5.0, entry_price="0")  # invalid input: WARNING

    lines = json_lines(stream)
    assert {line["instance"] for line in lines} == {"vps-1"}
    publish, retract, invalid = (line for line in lines if line["level"] != "DEBUG")
    assert publish["instance"] == "vps-1"
    assert {k: publish[k] for k in ("event", "symbol", "action", "trigger")} == {
        "event": "publish",
        "symbol": "BTCUSDT",
        "action": "PARTIAL_25",
        "trigger": "change",
    }
    assert publish["R_net"] == pytest.approx(2.45)
    assert 0 < publish["kill_score"] < 1  # type: ignore[operator]
    assert isinstance(publish["plan_id"], str) and len(publish["plan_id"]) == 16
    assert publish["seq"] == int(T0 * 1000)
    assert publish["msg"].startswith("publish BTCUSDT trigger=change action=PARTIAL_25")  # type: ignore[union-attr]
    assert retract["event"] == "retract" and retract["reason"] == "flat: position side is FLAT"
    assert retract["symbol"] == "BTCUSDT" and retract["instance"] == "vps-1"
    assert invalid["level"] == "WARNING"
    assert invalid["symbol"] == "BTCUSDT" and invalid["reason"] == "invalid_position"


# -- journald ----------------------------------------------------------------------------------
def _journal_env(path: Path) -> dict[str, str]:
    found = os.stat(path)
    return {"JOURNAL_STREAM": f"{found.st_dev}:{found.st_ino}"}


def test_under_journald_lines_carry_their_priority_and_no_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        setup_logging("DEBUG", "text", stream=stream, environ=_journal_env(path))
        log = logging.getLogger("harvest_async.test")
        log.debug("why not")
        log.info("published")
        log.warning("input went bad")
        log.error("denied")
    lines = path.read_text().splitlines()
    assert lines == [
        "<7>DEBUG   harvest_async.test: why not",
        "<6>INFO    harvest_async.test: published",
        "<4>WARNING harvest_async.test: input went bad",
        "<3>ERROR   harvest_async.test: denied",
    ]


def test_json_under_journald_is_prefixed_too(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        setup_logging("INFO", "json", stream=stream, environ=_journal_env(path))
        logging.getLogger("harvest_async.test").warning("input went bad", extra={"symbol": "X"})
    (line,) = path.read_text().splitlines()
    assert line.startswith("<4>{")
    assert json.loads(line[3:])["symbol"] == "X"


def test_a_journal_stream_of_another_file_is_not_the_journal(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_text("")
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        # inherited from a parent whose stderr was the journal; ours is a file
        setup_logging("INFO", "text", stream=stream, environ=_journal_env(other))
        logging.getLogger("harvest_async.test").warning("plain")
    (line,) = path.read_text().splitlines()
    assert not line.startswith("<")
    assert line.endswith("WARNING harvest_async.test: plain")
    assert line[:4].isdigit()  # with its own timestamp


# -- volume ------------------------------------------------------------------------------------
def test_below_the_rate_every_publish_is_an_info_line_and_there_is_no_summary() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "text", stream=stream, environ={})
    plog = PublishLog(5.0, interval=60.0)
    e = engine(plog, floor=0.0)
    for i in range(20):  # 20 symbols, one publish every 0.5 s: 2 a second
        step(e, f"S{i}", T0 + i * 0.5, 1.0)
    plog.roll(T0 + 120.0)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 20
    assert all(" publish S" in line for line in lines)


def test_above_the_rate_one_summary_per_interval_and_detail_at_debug() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "json", stream=stream, environ={})
    plog = PublishLog(2.0, interval=10.0)
    e = engine(plog, floor=5.0)
    for i in range(50):  # 50 symbols publishing within one second
        step(e, f"S{i:02}", T0 + i * 0.01, 1.0 if i % 2 else 5.0)
    for i in range(10):  # material changes inside the floor: deferred
        step(e, f"S{i:02}", T0 + 1.0, 9.0)
    for i in range(40, 50):  # positions closed: retracted
        step(e, f"S{i:02}", T0 + 2.0, 1.0, side="FLAT")
    plog.roll(T0 + 10.5)  # the interval is over (the service's timer task does this)

    lines = json_lines(stream)
    detail = [line for line in lines if line.get("event") in ("publish", "retract")]
    assert len(detail) == 2 + 2  # the bucket's two, then two refilled in the next second
    (summary,) = [line for line in lines if line.get("event") == "summary"]
    assert summary["level"] == "INFO"
    assert summary["publishes"] == 50
    assert summary["actions"] == {"NONE": 25, "PARTIAL_25": 25}
    assert summary["triggers"] == {"change": 50}
    assert summary["retractions"] == 10 and summary["retraction_reasons"] == {"flat": 10}
    assert summary["deferrals"] == 10
    assert (
        "50 publishes (NONE 25, PARTIAL_25 25; change 50), 10 retractions (flat 10), "
        in (
            summary["msg"]  # type: ignore[operator]
        )
    )
    assert "LOG_PUBLISH_DETAIL_MAX_PER_SEC=2" in summary["msg"]  # type: ignore[operator]

    # the next interval is quiet again: no summary for it
    plog.roll(T0 + 30.0)
    assert len(json_lines(stream)) == len(lines)


def test_above_the_rate_the_detail_is_still_there_at_debug() -> None:
    stream = io.StringIO()
    setup_logging("DEBUG", "text", stream=stream, environ={})
    plog = PublishLog(1.0, interval=10.0)
    e = engine(plog, floor=0.0)
    for i in range(5):
        step(e, f"S{i}", T0, 1.0)
    publishes = [line for line in stream.getvalue().splitlines() if " publish S" in line]
    assert [line.split()[2] for line in publishes] == ["INFO", "DEBUG", "DEBUG", "DEBUG", "DEBUG"]


def test_a_final_roll_summarises_a_partial_interval() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "text", stream=stream, environ={})
    plog = PublishLog(0.0, interval=60.0)  # 0: always summarised
    e = engine(plog, floor=0.0)
    step(e, "A", T0, 1.0)
    plog.roll(T0 + 5.0, final=True)  # shutdown
    (line,) = stream.getvalue().splitlines()
    assert "in the last 5 s: 1 publishes (NONE 1; change 1), 0 retractions" in line


# -- why not published (DEBUG) -----------------------------------------------------------------
def test_debug_says_why_a_symbol_was_not_published(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="harvest_async.core.engine")
    e = engine(PublishLog(10.0))
    step(e, "A", T0, 1.0)  # R 0.45, NONE
    caplog.clear()
    step(e, "A", T0 + 2.0, 5.0)  # material, inside the floor
    step(e, "A", T0 + 10.0, 5.0)  # the floor's end: published
    step(e, "A", T0 + 12.0, 5.01)  # R moves 0.005: immaterial
    deferred, skipped = (r for r in caplog.records if r.name == "harvest_async.core.engine")
    assert deferred.levelno == logging.DEBUG
    assert deferred.getMessage() == (
        "A: deferred until 2023-11-14T22:13:30+00:00 (floor 10 s): action NONE -> PARTIAL_25; "
        "new SL None -> 100.2; R_net 0.450 -> 2.450 (> R_EPS 0.05)"
    )
    assert (deferred.symbol, deferred.event, deferred.until) == ("A", "defer", T0 + 10.0)  # type: ignore[attr-defined]
    assert skipped.getMessage().startswith(
        "A: not published, immaterial (same action PARTIAL_25, same new SL, kill score moved "
    )
    assert "R_net moved 0.005 (<= R_EPS 0.05)); heartbeat at 2023-11-14T22:14:30" in (
        skipped.getMessage()
    )


def test_debug_says_a_proposal_was_adopted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="harvest_async.core.engine")
    first = engine(PublishLog(10.0))
    first.observe(inputs("A"))
    out = first.evaluate("A", T0)
    assert isinstance(out, PublishOut)
    second = engine(PublishLog(10.0))  # a restart
    second.note_existing("A", out.fields)
    second.observe(inputs("A"))
    assert second.evaluate("A", T0 + 5.0) is None
    assert second.adopted == 1
    (line,) = [r for r in caplog.records if getattr(r, "event", "") == "adopt"]
    assert line.levelno == logging.DEBUG
    assert line.getMessage() == f"A: adopted the proposal in Redis (plan_id={out.plan_id})"
