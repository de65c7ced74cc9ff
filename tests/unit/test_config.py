"""Settings from a mapping (config.py): the original service's Redis variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from harvest_async.config import ConfigError, settings_from_env


def test_redis_host_port_db_build_the_url_when_redis_url_is_unset() -> None:
    settings = settings_from_env({"REDIS_HOST": "10.9.9.9", "REDIS_PORT": "6390", "REDIS_DB": "2"})
    assert settings.redis_url == "redis://10.9.9.9:6390/2"
    assert settings.keys.db == 2  # the keyspace channel follows the database


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({"REDIS_HOST": "redis.internal"}, "redis://redis.internal:6379/0"),
        ({"REDIS_PORT": "6390"}, "redis://localhost:6390/0"),
        ({"REDIS_DB": "3"}, "redis://localhost:6379/3"),
        ({"REDIS_HOST": "::1", "REDIS_PORT": "7000"}, "redis://[::1]:7000/0"),
        ({"REDIS_HOST": " ", "REDIS_PORT": ""}, "redis://localhost:6379/0"),  # empty = unset
        ({}, "redis://localhost:6379/0"),
    ],
)
def test_each_original_variable_alone(env: dict[str, str], url: str) -> None:
    assert settings_from_env(env).redis_url == url


def test_redis_password_is_used_without_a_url() -> None:
    settings = settings_from_env({"REDIS_HOST": "h", "REDIS_PASSWORD": "s3cret"})
    assert settings.redis_password == "s3cret"
    assert "s3cret" not in settings.redis_url  # never in the URL that is logged


@pytest.mark.parametrize(
    "env",
    [
        {"REDIS_URL": "redis://127.0.0.1:6379/0", "REDIS_HOST": "localhost"},
        {"REDIS_URL": "redis://localhost/0", "REDIS_PORT": "6379", "REDIS_DB": "0"},
        {"REDIS_URL": "redis://10.9.9.9:6390/2", "REDIS_HOST": "10.9.9.9", "REDIS_DB": "2"},
        {"REDIS_URL": "redis://:pw@h:6379/0", "REDIS_PASSWORD": "pw"},
    ],
)
def test_both_given_and_agreeing_is_fine(env: dict[str, str]) -> None:
    assert settings_from_env(env).redis_url == env["REDIS_URL"]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"REDIS_URL": "redis://localhost:6379/0", "REDIS_HOST": "10.9.9.9"}, "REDIS_HOST"),
        ({"REDIS_URL": "redis://localhost:6379/0", "REDIS_PORT": "6390"}, "REDIS_PORT"),
        ({"REDIS_URL": "redis://localhost:6379/0", "REDIS_DB": "2"}, "REDIS_DB"),
        ({"REDIS_URL": "redis://localhost/5", "REDIS_DB": "0"}, "REDIS_DB"),
        ({"REDIS_URL": "unix:///run/redis.sock", "REDIS_HOST": "127.0.0.1"}, "REDIS_HOST"),
    ],
)
def test_both_given_and_disagreeing_names_both(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings_from_env(env)
    assert raised.value.variable == "REDIS_URL"
    assert named in str(raised.value)
    assert env[named] in str(raised.value)


def test_password_sources_must_agree(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    with pytest.raises(ConfigError, match="REDIS_PASSWORD_FILE and REDIS_PASSWORD"):
        settings_from_env({"REDIS_PASSWORD_FILE": str(secret), "REDIS_PASSWORD": "other"})
    with pytest.raises(ConfigError, match="REDIS_PASSWORD and the password in REDIS_URL"):
        settings_from_env({"REDIS_URL": "redis://:a@h/0", "REDIS_PASSWORD": "b"})
    same = settings_from_env({"REDIS_PASSWORD_FILE": str(secret), "REDIS_PASSWORD": "from-file"})
    assert same.redis_password == "from-file"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("REDIS_PORT", "abc"), ("REDIS_PORT", "0"), ("REDIS_PORT", "70000"), ("REDIS_DB", "-1")],
)
def test_bad_original_values_are_named(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings_from_env({variable: value})
    assert raised.value.variable == variable


def test_unknown_theta_name_in_a_file_lists_the_valid_names(tmp_path: Path) -> None:
    theta = tmp_path / "theta.toml"
    theta.write_text("T4_R = 1.0\n")
    with pytest.raises(ConfigError) as raised:
        settings_from_env({"THETA_FILE": str(theta)})
    text = str(raised.value)
    assert "T4_R" in text and "known: " in text and "kill_threshold" in text


# -- PROPOSAL_TTL_SEC (INTERFACE §2.5) -----------------------------------------------------


@pytest.mark.parametrize(
    ("env", "ttl"),
    [
        ({}, 180.0),  # 3 x the default heartbeat
        ({"MAX_PUBLISH_AGE_SEC": "20"}, 60.0),  # 3 x the heartbeat in force
        ({"PROPOSAL_TTL_SEC": "0"}, 0.0),  # no TTL
        ({"PROPOSAL_TTL_SEC": "61.5"}, 61.5),
    ],
)
def test_proposal_ttl(env: dict[str, str], ttl: float) -> None:
    assert settings_from_env(env).proposal_ttl_sec == ttl


@pytest.mark.parametrize("value", ["-1", "abc", "nan", "30", "60"])
def test_a_proposal_ttl_not_above_the_heartbeat_is_refused(value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings_from_env({"PROPOSAL_TTL_SEC": value, "MAX_PUBLISH_AGE_SEC": "60"})
    assert raised.value.variable == "PROPOSAL_TTL_SEC"


def test_outage_settings_defaults() -> None:
    settings = settings_from_env({})
    assert settings.redis_startup_timeout_sec == 0.0  # `run` waits for Redis forever
    assert settings.outage_reminder_sec == 60.0
    assert settings_from_env({"REDIS_STARTUP_TIMEOUT_SEC": "90"}).redis_startup_timeout_sec == 90


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REDIS_STARTUP_TIMEOUT_SEC", "-1"),
        ("REDIS_STARTUP_TIMEOUT_SEC", "soon"),
        ("OUTAGE_REMINDER_SEC", "0"),
        ("OUTAGE_REMINDER_SEC", "inf"),
    ],
)
def test_bad_outage_settings_are_named(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings_from_env({variable: value})
    assert raised.value.variable == variable
