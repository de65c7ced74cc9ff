"""support(): which servers harvest-async supports, from what INFO reports."""

from __future__ import annotations

from typing import Any

import pytest

from harvest_async.redis_io.server_version import ServerVersion, support

VALKEY = {"server_name": "valkey", "redis_version": "7.2.4"}


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ({"redis_version": "6.2.14"}, ("redis", "6.2.14", "supported")),
        ({"redis_version": "7.0.15"}, ("redis", "7.0.15", "supported")),
        ({"redis_version": "7.4.2"}, ("redis", "7.4.2", "supported")),
        ({"redis_version": "8.0.2"}, ("redis", "8.0.2", "untested")),
        ({"redis_version": "6.0.20"}, ("redis", "6.0.20", "unsupported")),
        ({"redis_version": "5.0.14"}, ("redis", "5.0.14", "unsupported")),
        ({**VALKEY, "valkey_version": "8.1.8"}, ("valkey", "8.1.8", "supported")),
        ({**VALKEY, "valkey_version": "9.0.0"}, ("valkey", "9.0.0", "untested")),
        ({**VALKEY, "valkey_version": "7.2.11"}, ("valkey", "7.2.11", "untested")),
        # a Valkey that names itself only through server_name
        (VALKEY, ("valkey", "7.2.4", "untested")),
        ({**VALKEY, "valkey_version": "unstable"}, ("valkey", "unstable", "untested")),
        ({}, ("redis", "", "untested")),
    ],
)
def test_verdict(info: dict[str, Any], expected: tuple[str, str, str]) -> None:
    server = ServerVersion.from_info(info)
    verdict, why = support(server)
    assert (server.flavour, server.version, verdict) == expected
    if verdict == "unsupported":
        assert why == f"{server} is too old: harvest-async needs Redis 6.2 or newer " + (
            "(tested: Redis 6.2 and 7.x, Valkey 8)"
        )
