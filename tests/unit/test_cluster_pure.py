"""Cluster mode's pure parts: REDIS_CLUSTER, key slots, CLUSTER SLOTS parsing, MOVED/ASK
replies, a node's URL, input streams grouped by slot (INTERFACE §7), the slots a topology
change moved and the symbols they touch (issue 14)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot as redis_key_slot

from harvest_async.config import ConfigError, settings_from_env
from harvest_async.core.keys import Keys
from harvest_async.core.slots import SLOTS, describe_slots, key_slot, slot_ranges, touches
from harvest_async.errors import RedisReplyError
from harvest_async.redis_io.cluster.cluster_notifications import node_url
from harvest_async.redis_io.cluster.cluster_streams import by_slot
from harvest_async.redis_io.cluster.routing import redirect
from harvest_async.redis_io.cluster.topology import (
    Address,
    _parse,
    _replicas,
    changed_slots,
    slot_of,
)
from harvest_async.redis_io.input_streams import stream_id


def test_redis_cluster_setting() -> None:
    assert settings_from_env({}).redis_cluster == "auto"
    assert settings_from_env({"REDIS_CLUSTER": "TRUE"}).redis_cluster == "true"
    assert settings_from_env({"REDIS_CLUSTER": "false"}).redis_cluster == "false"
    with pytest.raises(ConfigError, match="REDIS_CLUSTER"):
        settings_from_env({"REDIS_CLUSTER": "maybe"})
    with pytest.raises(ConfigError, match="only database 0"):
        settings_from_env({"REDIS_CLUSTER": "true", "REDIS_URL": "redis://h:7000/3"})
    with pytest.raises(ConfigError, match="REDIS_CLUSTER"):
        settings_from_env({"REDIS_CLUSTER": "true", "REDIS_URL": "unix:///tmp/r.sock"})


def test_key_slots_follow_hash_tags() -> None:
    assert slot_of("foo") == 12182  # the value the Redis Cluster specification gives
    assert slot_of("{user1000}.following") == slot_of("user1000")
    assert slot_of("quantum:harvest:lease:g:{7}") == slot_of("quantum:harvest:epoch:g:{7}")
    assert slot_of("foo{}{bar}") == slot_of("foo{}{bar}")  # an empty tag: the whole key


def test_cluster_slots_reply_parsed() -> None:
    reply = [
        [0, 5460, ["127.0.0.1", 7000, "id0"], ["127.0.0.1", 7003, "id3"]],
        [5461, 10922, ["", 7001, "id1"]],  # an unknown endpoint: the node asked
        [10923, 16383, ["10.0.0.3", 7002, "id2", {"hostname": "n3"}]],
    ]
    assert _parse(reply, ("192.0.2.1", 7001)) == [
        (0, 5460, ("127.0.0.1", 7000)),
        (5461, 10922, ("192.0.2.1", 7001)),
        (10923, 16383, ("10.0.0.3", 7002)),
    ]
    # the replicas, which the startup ACL check probes
    reply[1].append(["", 7004, "id4"])
    assert _replicas(reply, ("192.0.2.1", 7001)) == (("127.0.0.1", 7003), ("192.0.2.1", 7004))


def test_redirections() -> None:
    assert redirect(RedisReplyError("MOVED 3999 127.0.0.1:6381")) == ("MOVED", ("127.0.0.1", 6381))
    assert redirect(RedisReplyError("ASK 3999 ::1:6381")) == ("ASK", ("::1", 6381))
    assert redirect(RedisReplyError("NOSCRIPT no such script")) is None
    assert redirect("OK") is None


def test_node_url_keeps_credentials_and_options() -> None:
    url = "rediss://user:pw@seed.example:7000/0?ssl_cert_reqs=none"
    assert (
        node_url(url, ("10.0.0.2", 7001)) == "rediss://user:pw@10.0.0.2:7001/0?ssl_cert_reqs=none"
    )
    assert node_url("redis://seed:7000", ("::1", 7002)) == "redis://[::1]:7002/0"


# keys with braces in every position: hash tags, empty tags, unclosed ones
KEY_TEXT = st.text(alphabet=st.sampled_from("ab{}:é7"), max_size=12) | st.text(max_size=30)


@given(KEY_TEXT)
def test_key_slot_is_the_servers(key: str) -> None:
    assert key_slot(key) == redis_key_slot(key.encode()) == slot_of(key)
    assert 0 <= key_slot(key) < SLOTS


OWNERS: list[Address | None] = [("10.0.0.1", 7000), ("10.0.0.2", 7000), None]


@given(st.data())
def test_changed_slots_are_those_with_another_owner(data: st.DataObject) -> None:
    before = [OWNERS[0]] * SLOTS
    after = list(before)
    edits = data.draw(st.dictionaries(st.integers(0, SLOTS - 1), st.sampled_from(OWNERS)))
    for slot, owner in edits.items():
        after[slot] = owner
    moved = changed_slots(before, after)
    assert moved == {slot for slot, owner in edits.items() if owner != OWNERS[0]}
    assert changed_slots(after, before) == moved
    assert not changed_slots(after, after)


def test_a_reshard_of_a_range_moves_that_range() -> None:
    a, b = ("10.0.0.1", 7000), ("10.0.0.2", 7000)
    before: list[Address | None] = [a] * 5461 + [b] * (SLOTS - 5461)
    after = [b] * 300 + before[300:]
    assert changed_slots(before, after) == frozenset(range(300))
    assert describe_slots(changed_slots(before, after)) == "0-299"


@given(st.frozensets(st.integers(0, SLOTS - 1), max_size=200))
def test_slot_ranges_are_maximal_and_cover_the_set(slots: frozenset[int]) -> None:
    ranges = slot_ranges(slots)
    assert {s for a, b in ranges for s in range(a, b + 1)} == slots
    assert all(a <= b for a, b in ranges)
    # sorted, and apart by at least one slot not in the set (else they would be one)
    assert all(b1 + 1 < a2 for (_, b1), (a2, _) in itertools.pairwise(ranges))


def test_describe_slots() -> None:
    assert describe_slots([5, 1, 2, 3, 9]) == "1-3, 5, 9"
    assert describe_slots(range(0, 20, 2), most=2) == "0, 2, 8 more ranges"
    assert describe_slots([]) == ""


@given(st.text(min_size=1, max_size=10), st.frozensets(st.integers(0, SLOTS - 1), max_size=50))
def test_a_symbol_is_touched_by_a_slot_of_any_of_its_four_keys(
    symbol: str, slots: frozenset[int]
) -> None:
    keys = Keys()
    mine = [
        redis_key_slot(k.encode())
        for k in (
            keys.marketstate(symbol),
            keys.risk(symbol),
            keys.position(symbol),
            keys.proposal(symbol),
        )
    ]
    assert touches(keys, symbol, slots) == any(s in slots for s in mine)
    for slot in mine:  # each key's slot alone touches it
        assert touches(keys, symbol, {slot})


def test_input_streams_are_grouped_by_slot() -> None:
    """One XREAD per slot (streams in several slots are CROSSSLOT even on one node):
    streams sharing a hash tag are read together; a name given twice is read once."""
    assert by_slot(["a{x}", "b", "c{x}", "b"]) == [("a{x}", "c{x}"), ("b",)]
    names = ["quantum:stream:marketstate", "quantum:stream:risk.proposal"]
    assert slot_of(names[0]) != slot_of(names[1])
    assert by_slot(names) == [(names[0],), (names[1],)]


def test_stream_ids_compare_as_numbers() -> None:
    assert stream_id("1700000000000-10") > stream_id("1700000000000-9")
    assert stream_id("999-0") < stream_id("1000-0")
    assert stream_id("0-0") < stream_id("1-1")
