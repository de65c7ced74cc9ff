"""`record --from-streams`, the pure part: stream entries -> recording lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from harvest_async.errors import ConfigError
from harvest_async.replay.format import FORMAT, VERSION, Delete, End, Header, Set, SymbolState
from harvest_async.replay.from_streams import (
    StreamConverter,
    StreamSpec,
    TakenSnapshot,
    parse_stream_specs,
)
from harvest_async.replay.recording_reader import read_all
from harvest_async.replay.stream_window import parse_bound

MS = 1_767_225_600_000
SPECS = (StreamSpec("ms", "marketstate"), StreamSpec("pos", "position"))
MARKET = {"sigma": "0.01", "ts": "0.4", "p_trend": "0.6", "p_mr": "0.2", "p_chop": "0.2"}


def position(pnl: float) -> dict[str, str]:
    return {"side": "LONG", "entry_price": "100", "unrealized_pnl": repr(pnl)}


def header() -> Header:
    return Header(format=FORMAT, version=VERSION, start=0.0)


def converter(path: Path, **kw: object) -> StreamConverter:
    return StreamConverter(SPECS, path, header(), **kw)  # type: ignore[arg-type]


def feed(conv: StreamConverter, ms: int, index: int, **fields: str) -> None:
    conv.feed(ms, 0, index, f"{ms}-0", dict(fields))


def test_stream_specs() -> None:
    specs = parse_stream_specs(["a:b=marketstate, c=position", "x=y=risk"])
    assert specs == (
        StreamSpec("a:b", "marketstate"),
        StreamSpec("c", "position"),
        StreamSpec("x=y", "risk"),  # the last '=' separates the kind
    )
    for bad, words in (
        (["a"], "expected STREAM=KIND"),
        (["a=trades"], "unknown input kind 'trades'"),
        (["a=risk,a=position"], "listed twice"),
        ([","], "no stream given"),
    ):
        with pytest.raises(ConfigError, match=words):
            parse_stream_specs(bad)


def test_entries_before_since_make_the_initial_state_the_rest_become_lines(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.jsonl"
    conv = converter(path, since=parse_bound(str(MS // 1000 + 10), option="--since"))
    feed(conv, MS, 0, symbol="BTCUSDT", **MARKET)
    feed(conv, MS + 1000, 1, symbol="BTCUSDT", **position(1.0))
    feed(conv, MS + 2000, 1, symbol="BTCUSDT", **position(2.0))  # latest wins
    feed(conv, MS + 3000, 1, symbol="ETHUSDT", **position(1.0))
    feed(conv, MS + 4000, 1, symbol="ETHUSDT", op="delete")  # gone before the start
    feed(conv, MS + 10_000, 1, symbol="BTCUSDT", **position(3.0), op="set")
    feed(conv, MS + 11_000, 0, symbol="BTCUSDT", op="delete")
    stats = conv.finish(MS / 1000 + 20)
    head, lines = read_all(path)
    assert head.start == MS / 1000 + 10
    assert head.snapshot == {"BTCUSDT": SymbolState(marketstate=MARKET, position=position(2.0))}
    assert lines == [
        Set((MS + 10_000) / 1000, "position", "BTCUSDT", position(3.0)),  # no `op` field
        Delete((MS + 11_000) / 1000, "marketstate", "BTCUSDT"),
        End(MS / 1000 + 20, "streams", 2),
    ]
    assert (stats.folded, stats.changes, stats.entries, stats.unusable) == (5, 2, 7, 0)


def test_unusable_entries_are_reported_never_guessed(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    conv = converter(path, symbols=frozenset({"BTCUSDT"}))
    feed(conv, MS, 1, symbol="BTCUSDT", **position(1.0))
    feed(conv, MS + 1000, 1, symbol="BTCUSDT")  # a change signal, no snapshot
    feed(conv, MS + 2000, 1, symbol="BTCUSDT", op="rename", **position(2.0))
    feed(conv, MS + 3000, 1, **position(2.0))  # no symbol
    feed(conv, MS + 4000, 1, symbol="ETHUSDT", **position(2.0))  # not asked for
    stats = conv.finish(MS / 1000 + 5)
    _, lines = read_all(path)
    assert [type(x).__name__ for x in lines] == ["Set", "End"]
    assert stats.unusable == 3 and stats.unusable_symbols == {"BTCUSDT"}
    assert stats.examples == [
        f"pos {MS + 1000}-0 (BTCUSDT): a change signal, and no --snapshot-from to complete it",
        f"pos {MS + 2000}-0 (BTCUSDT): unknown op 'rename'",
        f"pos {MS + 3000}-0: no symbol field",
    ]
    assert "3 entries unusable (1 symbols" in stats.warnings()[0]


def test_a_snapshot_completes_a_keys_last_signal_and_fills_untouched_keys(
    tmp_path: Path,
) -> None:
    snapshot = TakenSnapshot(
        MS / 1000 + 60,
        {
            "BTCUSDT": SymbolState(marketstate=MARKET, position=position(7.0)),
            "ETHUSDT": SymbolState(position=position(4.0)),
            "SOLUSDT": SymbolState(position=position(5.0)),
        },
        last={
            ("position", "BTCUSDT"): (MS + 2000, 0, 1),
            ("position", "SOLUSDT"): (MS + 3000, 0, 1),
        },
        unsettled={("position", "SOLUSDT")},  # written again while the snapshot was read
    )
    path = tmp_path / "r.jsonl"
    conv = converter(path, snapshot=snapshot)
    feed(conv, MS + 1000, 1, symbol="BTCUSDT")  # not the last: unusable
    feed(conv, MS + 2000, 1, symbol="BTCUSDT")  # the last: the snapshot holds its value
    feed(conv, MS + 3000, 1, symbol="SOLUSDT")  # last, but unsettled
    stats = conv.finish(MS / 1000 + 60)
    head, lines = read_all(path)
    # untouched keys as the snapshot shows them; touched ones start unknown (absent)
    assert head.snapshot == {
        "BTCUSDT": SymbolState(marketstate=MARKET),
        "ETHUSDT": SymbolState(position=position(4.0)),
    }
    assert lines[:-1] == [Set((MS + 2000) / 1000, "position", "BTCUSDT", position(7.0))]
    assert (stats.completed, stats.unusable) == (1, 2)


def test_an_incomplete_history_makes_first_appearances_unknown(tmp_path: Path) -> None:
    conv = converter(
        tmp_path / "r.jsonl",
        since=parse_bound(str(MS // 1000 + 10), option="--since"),
        history_complete=False,
    )
    feed(conv, MS, 1, symbol="BTCUSDT", **position(1.0))  # seen before the start: known
    feed(conv, MS + 10_000, 1, symbol="BTCUSDT", **position(2.0))
    feed(conv, MS + 11_000, 1, symbol="ETHUSDT", **position(2.0))  # first seen after
    feed(conv, MS + 12_000, 0, symbol="BTCUSDT", **MARKET)  # first seen after
    stats = conv.finish(MS / 1000 + 20)
    assert stats.unknown_initial == 2
    assert "2 input keys first appear after --since" in stats.warnings()[0]


def test_no_entry_in_the_window_still_makes_a_recording(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    conv = converter(path, since=parse_bound(str(MS // 1000 + 10), option="--since"))
    feed(conv, MS, 1, symbol="BTCUSDT", **position(1.0))
    stats = conv.finish(MS / 1000 + 20)
    head, lines = read_all(path)
    assert head.start == MS / 1000 + 10 and "BTCUSDT" in head.snapshot
    assert lines == [End(MS / 1000 + 20, "streams", 0)]
    assert stats.symbols == 1
