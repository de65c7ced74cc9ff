"""GROUP, PARTITIONS, LEASE_TTL_SEC (INTERFACE §6): defaults and validation."""

from __future__ import annotations

import pytest

from harvest_async.config import ConfigError, settings_from_env
from harvest_async.core.keys import Keys


def test_defaults_no_group() -> None:
    s = settings_from_env({})
    assert (s.group, s.partitions, s.lease_ttl_sec) == (None, 64, 4.0)


def test_group_settings() -> None:
    s = settings_from_env({"GROUP": "desk-a", "PARTITIONS": "16", "LEASE_TTL_SEC": "2.5"})
    assert (s.group, s.partitions, s.lease_ttl_sec) == ("desk-a", 16, 2.5)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"GROUP": "a b"}, "GROUP"),
        ({"GROUP": "a{b}"}, "GROUP"),
        ({"GROUP": "x" * 65}, "GROUP"),
        ({"PARTITIONS": "0"}, "PARTITIONS"),
        ({"PARTITIONS": "many"}, "PARTITIONS"),
        ({"PARTITIONS": "5000"}, "PARTITIONS"),
        ({"LEASE_TTL_SEC": "0.5"}, "LEASE_TTL_SEC"),
        ({"LEASE_TTL_SEC": "-1"}, "LEASE_TTL_SEC"),
        ({"LEASE_TTL_SEC": "nan"}, "LEASE_TTL_SEC"),
        ({"LEASE_TTL_SEC": "601"}, "LEASE_TTL_SEC"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as exc:
        settings_from_env(env)
    assert exc.value.variable == variable


def test_lease_and_epoch_keys_share_the_partition_hash_tag() -> None:
    keys = Keys()
    assert keys.lease("desk-a", 7) == "quantum:harvest:lease:desk-a:{7}"
    assert keys.epoch("desk-a", 7) == "quantum:harvest:epoch:desk-a:{7}"
