"""`replay --into` moves the epoch fields of the hashes to the time of writing."""

from __future__ import annotations

from harvest_async.core.input_hashes import parse_epoch
from harvest_async.replay.into_redis import shift_times


def test_each_time_field_keeps_its_format() -> None:
    fields = {
        "ts_timestamp": "1767225600",  # integer seconds
        "ts_epoch": "1767225600.25",  # float seconds
        "created_at": "1767225600000",  # milliseconds
        "sigma": "0.01",  # not a time: untouched
    }
    out = shift_times(fields, 3600.25)
    assert out == {
        "ts_timestamp": "1767229200",
        "ts_epoch": "1767229200.5",
        "created_at": "1767229200250",
        "sigma": "0.01",
    }
    assert fields["ts_epoch"] == "1767225600.25"  # the input is not modified


def test_iso_created_at() -> None:
    out = shift_times({"created_at": "2026-01-01T00:00:00Z"}, 90.0)
    assert out["created_at"] == "2026-01-01T00:01:30Z"
    assert parse_epoch(out["created_at"]) == 1767225690.0
    out = shift_times({"created_at": "2026-01-01T00:00:00+00:00"}, -60.0)
    assert out["created_at"] == "2025-12-31T23:59:00+00:00"


def test_garbage_and_zero_offset_are_left_alone() -> None:
    fields = {"ts_epoch": "soon", "created_at": "", "ts_timestamp": "nan"}
    assert shift_times(fields, 10.0) == fields
    same = {"ts_epoch": "1.5"}
    assert shift_times(same, 0.0) is same


def test_ages_are_preserved() -> None:
    """A position's age (snapshot time minus open time) is the same after the shift."""
    fields = {"ts_epoch": "1767225630.5", "created_at": "1767222000"}
    out = shift_times(fields, 12345.0)
    before = float(fields["ts_epoch"]) - float(fields["created_at"])
    after = float(out["ts_epoch"]) - float(out["created_at"])
    assert after == before
