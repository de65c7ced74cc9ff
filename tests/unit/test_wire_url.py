"""Redis URLs as the wire reads them: the forms REDIS_URL accepts, as redis-py reads them."""

from __future__ import annotations

import ssl

import pytest
from redis.connection import parse_url

from harvest_async.redis_io.wire_url import endpoint_from_url


def test_tcp_url_with_acl_user_and_database() -> None:
    endpoint = endpoint_from_url("redis://harvest:p%40ss@redis.example:6380/2")

    assert (endpoint.host, endpoint.port, endpoint.path, endpoint.tls) == (
        "redis.example",
        6380,
        None,
        None,
    )
    assert (endpoint.username, endpoint.password, endpoint.db) == ("harvest", "p@ss", 2)
    assert endpoint.describe() == "redis://redis.example:6380"  # no credentials


def test_defaults() -> None:
    endpoint = endpoint_from_url("redis://")

    assert (endpoint.host, endpoint.port, endpoint.db, endpoint.password) == (
        "localhost",
        6379,
        0,
        None,
    )
    assert endpoint.connect_timeout == 5.0


def test_unix_socket_with_database_and_credentials() -> None:
    endpoint = endpoint_from_url("unix://user:pw@/run/redis/redis.sock?db=4")

    assert (endpoint.path, endpoint.db, endpoint.username, endpoint.password) == (
        "/run/redis/redis.sock",
        4,
        "user",
        "pw",
    )
    assert endpoint.describe() == "unix:///run/redis/redis.sock"


@pytest.mark.parametrize(
    "url",
    [
        "redis://u:pw@h:1/3",
        "redis://h/5?db=6",
        "redis://:only@h",
        "unix:///tmp/r.sock?db=2",
        "rediss://h:6390/1?ssl_cert_reqs=none",
    ],
)
def test_agrees_with_redis_py(url: str) -> None:
    expected = parse_url(url)
    endpoint = endpoint_from_url(url)

    assert endpoint.db == expected.get("db", 0)
    assert endpoint.password == expected.get("password")
    assert endpoint.username == expected.get("username")
    assert endpoint.path == expected.get("path")
    if endpoint.path is None:
        assert (endpoint.host, endpoint.port) == (expected["host"], expected.get("port", 6379))


def test_separate_password_applies_when_the_url_has_none() -> None:
    assert endpoint_from_url("redis://h", "from-file").password == "from-file"
    assert endpoint_from_url("redis://:in-url@h", "from-file").password == "in-url"


def test_tls_verifies_by_default_and_options_relax_it() -> None:
    strict = endpoint_from_url("rediss://h").tls
    relaxed = endpoint_from_url("rediss://h?ssl_cert_reqs=none").tls
    no_hostname = endpoint_from_url("rediss://h?ssl_check_hostname=false").tls

    assert strict is not None and strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
    assert relaxed is not None and relaxed.verify_mode == ssl.CERT_NONE
    assert no_hostname is not None and not no_hostname.check_hostname
    assert no_hostname.verify_mode == ssl.CERT_REQUIRED
    pinned = endpoint_from_url("rediss://h?ssl_min_version=TLSv1_3").tls
    assert pinned is not None and pinned.minimum_version == ssl.TLSVersion.TLSv1_3


def test_connect_timeout_from_the_query_and_client_options_ignored() -> None:
    endpoint = endpoint_from_url("redis://h?socket_connect_timeout=1.5&socket_timeout=9")

    assert endpoint.connect_timeout == 1.5


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h", "must start with"),
        ("redis://h/x", "database must be a number"),
        ("unix:///s?db=-1", "database must be a number"),
        ("unix://", "needs the socket's path"),
        ("redis://h?sssl_cert_reqs=none", "unknown option"),
        ("rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs must be"),
        ("redis://h?socket_connect_timeout=0", "socket_connect_timeout"),
    ],
)
def test_mistakes_are_named(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        endpoint_from_url(url)
