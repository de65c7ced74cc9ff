"""The recording format: round trips, gzip, versions, and errors that name the line."""

from __future__ import annotations

import gzip
from pathlib import Path

import msgspec
import pytest

from harvest_async.replay.format import (
    FORMAT,
    VERSION,
    Delete,
    End,
    Header,
    RecordingError,
    Set,
    Snapshot,
    SymbolState,
)
from harvest_async.replay.recording_reader import RecordingReader, read_all
from harvest_async.replay.recording_writer import RecordingWriter, write_recording
from harvest_async.tools.simulate import InputWrite

T0 = 1_767_225_600.0
POS = {"side": "LONG", "entry_price": "100", "unrealized_pnl": "1.0", "quantity": "1"}
MS = {"sigma": "0.01", "ts": "0.4", "p_trend": "0.6", "p_mr": "0.2", "p_chop": "0.2"}


def header(**over: object) -> Header:
    fields: dict[str, object] = {
        "format": FORMAT,
        "version": VERSION,
        "start": T0,
        "snapshot": {"BTCUSDT": SymbolState(marketstate=MS, position=POS)},
    }
    fields.update(over)
    return Header(**fields)  # type: ignore[arg-type]


def write_sample(path: Path) -> None:
    with RecordingWriter(path, header()) as w:
        w.set(T0 + 1, "position", "BTCUSDT", {**POS, "unrealized_pnl": "5.0"})
        w.set(T0 + 1, "risk", "BTCUSDT", {"stop_dist_pct": "0.02"})
        w.delete(T0 + 2.5, "risk", "BTCUSDT")
        w.snapshot(T0 + 3, "resubscribed", {"ETHUSDT": SymbolState(position=POS)})
        w.set(T0 + 4, "marketstate", "ETHUSDT", MS)


def lines_of(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.splitlines()


@pytest.mark.parametrize("name", ["rec.jsonl", "rec.jsonl.gz"])
def test_round_trip(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    write_sample(path)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    head, lines = read_all(path)
    assert head == header()
    assert lines == [
        Set(T0 + 1, "position", "BTCUSDT", {**POS, "unrealized_pnl": "5.0"}),
        Set(T0 + 1, "risk", "BTCUSDT", {"stop_dist_pct": "0.02"}),
        Delete(T0 + 2.5, "risk", "BTCUSDT"),
        Snapshot(T0 + 3, "resubscribed", {"ETHUSDT": SymbolState(position=POS)}),
        Set(T0 + 4, "marketstate", "ETHUSDT", MS),
        End(T0 + 4, "stopped", 4),
    ]


def test_lines_are_the_documented_json(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    write_sample(path)
    raw = lines_of(path)
    first = msgspec.json.decode(raw[0])
    assert first["format"] == "harvest-async-recording" and first["version"] == 1
    assert raw[1].startswith(b'{"op":"set","at":1767225601.0,"kind":"position",')
    assert raw[3] == b'{"op":"delete","at":1767225602.5,"kind":"risk","symbol":"BTCUSDT"}'
    assert raw[-1] == b'{"op":"end","at":1767225604.0,"reason":"stopped","changes":4}'


def test_gzip_is_recognised_by_content_not_name(tmp_path: Path) -> None:
    plain = tmp_path / "rec.jsonl"
    write_sample(plain)
    disguised = tmp_path / "rec.data"
    disguised.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_all(disguised) == read_all(plain)


def test_gzip_output_is_reproducible(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    write_sample(a)
    write_sample(b)
    assert a.read_bytes() == b.read_bytes()  # no file name, mtime 0


def test_writer_never_goes_back_in_time(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    with RecordingWriter(path, header()) as w:
        w.set(T0 + 5, "position", "BTCUSDT", POS)
        w.set(T0 + 4, "position", "BTCUSDT", POS)  # a wall-clock step backwards
        w.set(T0 + 1, "risk", "BTCUSDT", {})  # empty hash: recorded as a delete
    _, lines = read_all(path)
    assert [line.at for line in lines] == [T0 + 5] * 4
    assert isinstance(lines[2], Delete)


def test_atomic_writer_leaves_nothing_on_error(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    with pytest.raises(RuntimeError), RecordingWriter(path, header(), atomic=True) as w:
        w.set(T0 + 1, "position", "BTCUSDT", POS)
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_write_recording_from_simulator_writes(tmp_path: Path) -> None:
    path = tmp_path / "sim.jsonl.gz"
    initial = [
        InputWrite(T0, "marketstate", "BTCUSDT", "set", MS),
        InputWrite(T0, "position", "BTCUSDT", "set", POS),
    ]
    changes = [
        InputWrite(T0 + 1, "position", "BTCUSDT", "delete", {}),
        InputWrite(T0 + 2, "risk", "ETHUSDT", "set", {"stop_dist_pct": "0.01"}),
    ]
    write_recording(path, start=T0, initial=initial, changes=changes, end_at=T0 + 10)
    head, lines = read_all(path)
    assert head.snapshot == {"BTCUSDT": SymbolState(marketstate=MS, position=POS)}
    assert lines == [
        Delete(T0 + 1, "position", "BTCUSDT"),
        Set(T0 + 2, "risk", "ETHUSDT", {"stop_dist_pct": "0.01"}),
        End(T0 + 10, "generated", 2),
    ]


# -- errors ------------------------------------------------------------------------------


def corrupt(tmp_path: Path, lineno: int, text: bytes, *, gz: bool = False) -> Path:
    """The sample with line `lineno` (1 = header) replaced by `text`."""
    path = tmp_path / "good.jsonl"
    write_sample(path)
    raw = lines_of(path)
    raw[lineno - 1] = text
    data = b"\n".join(raw) + b"\n"
    out = tmp_path / ("bad.jsonl.gz" if gz else "bad.jsonl")
    out.write_bytes(gzip.compress(data) if gz else data)
    return out


def error_of(path: Path) -> RecordingError:
    with pytest.raises(RecordingError) as info:
        read_all(path)
    return info.value


@pytest.mark.parametrize(
    ("lineno", "text", "message"),
    [
        (3, b'{"op":"set","at":1767225601.0,"kind":"risk","symbol":"BTCUSDT","fie', "cut short"),
        (3, b"this is not json", "not valid JSON"),
        (4, b'{"op":"delete","at":"soon","kind":"risk","symbol":"BTCUSDT"}', "Expected `float`"),
        (4, b'{"op":"delete","at":1767225602.5,"kind":"price","symbol":"X"}', "kind"),
        (4, b'{"op":"rename","at":1767225602.5}', "rename"),
        (4, b'{"op":"set","at":1767225602.5,"kind":"risk","symbol":"X","fields":{}}', "fields"),
        (4, b'{"op":"delete","at":1767225600.5,"kind":"risk","symbol":"X"}', "backwards"),
        (2, b'{"op":"delete","at":1767225599.0,"kind":"risk","symbol":"X"}', "backwards"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_a_bad_line_names_its_number(
    tmp_path: Path, lineno: int, text: bytes, message: str, gz: bool
) -> None:
    err = error_of(corrupt(tmp_path, lineno, text, gz=gz))
    assert err.line == lineno, err
    assert message in str(err)
    assert f"bad.jsonl{'.gz' if gz else ''}:{lineno}:" in str(err)


def test_blank_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "good.jsonl"
    write_sample(path)
    raw = lines_of(path)
    raw[4:4] = [b"", b"   "]  # two blank lines before the snapshot
    raw[7] = b'{"op":"set"}'  # was the marketstate set (line 6, now line 8)
    path.write_bytes(b"\n".join(raw) + b"\n")
    assert error_of(path).line == 8


def test_error_past_the_first_chunk(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    big = {**POS, "pad": "x" * 200}
    with RecordingWriter(path, header()) as w:
        for i in range(8000):  # ~2.5 MB: several read chunks
            w.set(T0 + i, "position", "BTCUSDT", big)
    raw = lines_of(path)
    raw[6000] = raw[6000][:50]
    path.write_bytes(b"\n".join(raw) + b"\n")
    err = error_of(path)
    assert err.line == 6001


def test_truncated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl"
    write_sample(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])  # the end marker is cut in the middle
    err = error_of(path)
    assert err.line == 7 and "cut short" in str(err)


def test_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl.gz"
    write_sample(path)
    data = path.read_bytes()
    path.write_bytes(data[:-12])  # the gzip trailer and some data are gone
    err = error_of(path)
    assert "ends early" in str(err) or "cut short" in str(err)


def test_data_after_the_end_marker(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    write_sample(path)
    with path.open("ab") as f:
        f.write(b'{"op":"delete","at":1767225609.0,"kind":"risk","symbol":"X"}\n')
    err = error_of(path)
    assert err.line == 8 and "after the end marker" in str(err)


def test_end_marker_counts_changes(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    write_sample(path)
    raw = lines_of(path)
    del raw[2]  # a change line lost
    path.write_bytes(b"\n".join(raw) + b"\n")
    err = error_of(path)
    assert "counts 4 changes but the file holds 3" in str(err)


def test_newer_version_is_refused(tmp_path: Path) -> None:
    path = corrupt(
        tmp_path, 1, b'{"format":"harvest-async-recording","version":2,"start":1.0,"future":1}'
    )
    err = error_of(path)
    assert err.line == 1
    assert "version 2 is newer than this harvest-async supports (version 1)" in str(err)
    assert "upgrade" in str(err)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'{"event":"publish"}', "not a harvest-async recording"),
        (b"[1, 2]", "not a harvest-async recording"),
        (b"", "empty file"),
        (b'{"format":"harvest-async-recording","version":"1"}', "invalid format version"),
        (b'{"format":"harvest-async-recording","version":1,"start":"x"}', "bad header"),
    ],
)
def test_bad_header(tmp_path: Path, text: bytes, message: str) -> None:
    path = tmp_path / "h.jsonl"
    path.write_bytes(text + b"\n")
    err = error_of(path)
    assert err.line == 1 and message in str(err)


def test_missing_file() -> None:
    with pytest.raises(RecordingError, match="cannot open"):
        RecordingReader("/nonexistent/recording.jsonl")


def test_unknown_fields_are_ignored(tmp_path: Path) -> None:
    """Additions within a version (new optional fields) do not break older readers."""
    path = tmp_path / "rec.jsonl"
    write_sample(path)
    raw = lines_of(path)
    raw[1] = raw[1][:-1] + b',"producer":"p1"}'
    path.write_bytes(b"\n".join(raw) + b"\n")
    _, lines = read_all(path)
    assert isinstance(lines[0], Set)
