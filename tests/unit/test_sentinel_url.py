"""REDIS_URL=redis+sentinel://... (INTERFACE §7): parsed, validated, never logged with
its credentials."""

from __future__ import annotations

import pytest

from harvest_async.config import ConfigError, settings_from_env
from harvest_async.config.sentinel_url import mask_url, parse_sentinel_url
from harvest_async.redis_io.client import describe_url
from harvest_async.redis_io.wire_url import endpoint_from_url
from harvest_async.tools.effective_config import Layers, effective_config


def test_several_sentinels_service_and_database() -> None:
    parsed = parse_sentinel_url("redis+sentinel://s1:26380,s2,[::1]:26381/mymaster/3")

    assert parsed.sentinels == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert (parsed.service, parsed.db, parsed.username, parsed.password) == (
        "mymaster",
        3,
        None,
        None,
    )
    assert parsed.describe() == "redis+sentinel://s1:26380,s2:26379,[::1]:26381/mymaster/3"


def test_the_form_of_the_contract_and_credentials() -> None:
    parsed = parse_sentinel_url("redis+sentinel://harvest:p%40ss@host:26379/MASTERNAME/0")

    assert parsed.sentinels == (("host", 26379),)
    assert (parsed.service, parsed.db) == ("MASTERNAME", 0)
    assert (parsed.username, parsed.password) == ("harvest", "p@ss")


def test_database_defaults_to_zero_and_a_trailing_slash_is_fine() -> None:
    assert parse_sentinel_url("redis+sentinel://h:1/svc").db == 0
    assert parse_sentinel_url("redis+sentinel://h:1/svc/").db == 0


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis+sentinel://h:26379", "names the primary's service"),
        ("redis+sentinel://h:26379/", "names the primary's service"),
        ("redis+sentinel://h:26379/svc/x", "database must be a number"),
        ("redis+sentinel://h:26379/svc/1/2", "path is /SERVICE[/DB]"),
        ("redis+sentinel://h:99999/svc", "invalid port"),
        ("redis+sentinel://h:1,:2/svc", "needs a host"),
        ("redis+sentinel://h:1/svc?pool=3", "unknown option"),
    ],
)
def test_invalid_urls_are_a_config_error_naming_redis_url(url: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_env({"REDIS_URL": url})

    assert caught.value.variable == "REDIS_URL"
    assert words in str(caught.value)


def test_settings_take_the_database_and_the_password() -> None:
    settings = settings_from_env({"REDIS_URL": "redis+sentinel://:secret@h:26379/svc/2"})

    assert settings.keys.db == 2
    assert settings.redis_password is None  # stays in the URL, as with redis://
    assert settings_from_env({"REDIS_URL": "redis+sentinel://h/svc", "REDIS_DB": "0"})


@pytest.mark.parametrize("variable", ["REDIS_HOST", "REDIS_PORT"])
def test_original_host_and_port_cannot_apply(variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        settings_from_env({"REDIS_URL": "redis+sentinel://h/svc", variable: "6379"})


def test_redis_db_must_agree() -> None:
    with pytest.raises(ConfigError, match="REDIS_DB"):
        settings_from_env({"REDIS_URL": "redis+sentinel://h/svc/1", "REDIS_DB": "2"})


def test_credentials_are_masked_in_logs_and_config_output() -> None:
    url = "redis+sentinel://harvest:hunter2@s1:26379,s2:26379/svc/0?sentinel_password=s3cret"

    assert mask_url(url) == "redis+sentinel://***@s1:26379,s2:26379/svc/0?sentinel_password=***"
    assert "hunter2" not in describe_url(url) and "s3cret" not in describe_url(url)
    rows = effective_config(Layers(environ={"REDIS_URL": url})).settings
    shown = " ".join(f"{row.variable}={row.value}" for row in rows)
    assert "hunter2" not in shown and "s3cret" not in shown
    assert "s1:26379,s2:26379/svc/0" in shown


def test_the_wire_endpoint_asks_the_sentinels() -> None:
    endpoint = endpoint_from_url(
        "redis+sentinel://u:pw@s1:1,s2:2/svc/4?sentinel_password=sp&socket_connect_timeout=0.5",
        "ignored",
    )

    assert endpoint.sentinel is not None
    assert endpoint.sentinel.addresses == (("s1", 1), ("s2", 2))
    assert (endpoint.sentinel.service, endpoint.sentinel.password) == ("svc", "sp")
    assert (endpoint.username, endpoint.password, endpoint.db) == ("u", "pw", 4)
    assert endpoint.connect_timeout == 0.5
    assert endpoint.describe() == "redis+sentinel://s1:1,s2:2/svc"
    primary = endpoint.at("10.0.0.5", 6379)
    assert (primary.host, primary.port, primary.sentinel, primary.db) == ("10.0.0.5", 6379, None, 4)
    assert endpoint_from_url("redis+sentinel://s/svc", "given").password == "given"
