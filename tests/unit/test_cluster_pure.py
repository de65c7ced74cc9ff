"""Cluster mode's pure parts: REDIS_CLUSTER, key slots, CLUSTER SLOTS parsing, MOVED/ASK
replies, a node's URL, input streams grouped by slot (INTERFACE §7)."""

from __future__ import annotations

import pytest

from harvest_async.config import ConfigError, settings_from_env
from harvest_async.errors import RedisReplyError
from harvest_async.redis_io.cluster.cluster_notifications import node_url
from harvest_async.redis_io.cluster.cluster_streams import by_slot
from harvest_async.redis_io.cluster.routing import redirect
from harvest_async.redis_io.cluster.topology import _parse, slot_of
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
