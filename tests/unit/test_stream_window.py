"""`--since` / `--until`: stream IDs, epoch seconds, ISO-8601; millisecond coverage."""

from __future__ import annotations

import pytest

from harvest_async.errors import ConfigError
from harvest_async.replay.stream_window import MAX_SEQ, StreamBound, entry_key, parse_bound

T = 1_767_225_600  # 2026-01-01T00:00:00Z


def test_a_stream_id_is_that_entry_exactly() -> None:
    bound = parse_bound(f"{T}000-7", option="--since")
    assert bound.is_id and bound.time == T
    assert bound.start_key() == bound.end_key() == (T * 1000, 7)
    assert (bound.xrange_start(), bound.xrange_end()) == (f"{T}000-7", f"{T}000-7")


@pytest.mark.parametrize(
    "text",
    [str(T), f"{T}.0", "2026-01-01T00:00:00Z", "2026-01-01T01:00:00+01:00", "2026-01-01T00:00:00"],
)
def test_times_in_every_accepted_form(text: str) -> None:
    bound = parse_bound(text, option="--since")  # without an offset: UTC
    assert not bound.is_id and bound.time == T
    assert bound.start_key() == (T * 1000, 0)
    assert bound.end_key() == (T * 1000, MAX_SEQ)


def test_a_time_covers_whole_milliseconds() -> None:
    bound = parse_bound(f"{T}.0005", option="--until")  # half a millisecond in
    assert bound.start_key() == (T * 1000 + 1, 0)  # since: from the next millisecond
    assert bound.end_key() == (T * 1000, MAX_SEQ)  # until: the whole millisecond before
    assert StreamBound.at_time(T + 0.25).xrange_start() == f"{T}250-0"


@pytest.mark.parametrize("text", ["yesterday", "12-", "-5", "1e9", ""])
def test_anything_else_is_a_configuration_error_naming_the_option(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_bound(text, option="--until")
    assert caught.value.variable == "--until"
    assert "stream ID" in str(caught.value)


def test_entry_keys_order_like_stream_ids() -> None:
    ids = ["10-2", "9-5", "10-10", "10-0"]
    assert sorted(ids, key=entry_key) == ["9-5", "10-0", "10-2", "10-10"]
