"""Input size limits (settings, codec, reply decoding) and ACL refusal wording."""

from __future__ import annotations

import pytest
from redis import exceptions as rexc

from harvest_async.config import ConfigError, settings_from_env
from harvest_async.core.input_hashes import OVERSIZED, USED_FIELDS, NoAdvice, trim
from harvest_async.core.inputs import parse_market, parse_position, parse_risk
from harvest_async.errors import AuthenticationFailed, PermissionDenied, RedisUnavailable
from harvest_async.redis_io.client import redis_errors, refused
from harvest_async.redis_io.inputs_io import InputLimits, decode_reply, unknown_command


def test_limits_default_and_parse() -> None:
    settings = settings_from_env({})
    assert (settings.max_input_fields, settings.max_input_value_bytes) == (256, 4096)
    settings = settings_from_env({"MAX_INPUT_FIELDS": "40", "MAX_INPUT_VALUE_BYTES": "100"})
    assert (settings.max_input_fields, settings.max_input_value_bytes) == (40, 100)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MAX_INPUT_FIELDS", "0"),
        ("MAX_INPUT_FIELDS", "many"),
        ("MAX_INPUT_VALUE_BYTES", "63"),
        ("MAX_INPUT_VALUE_BYTES", "4k"),
    ],
)
def test_invalid_limits_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_env({variable: value})
    assert info.value.variable == variable


def test_an_oversized_hash_is_invalid_input_saying_why() -> None:
    why = {OVERSIZED: "k has 300 fields (limit MAX_INPUT_FIELDS=256)"}
    market = parse_market(why)
    risk = parse_risk(why)
    position = parse_position(why, "X", needs_quantity=False)
    assert market == NoAdvice("invalid_marketstate", why[OVERSIZED])
    assert risk == NoAdvice("invalid_risk", why[OVERSIZED])
    assert position == NoAdvice("invalid_position", why[OVERSIZED])
    # a replay trims hashes like the live reader: the verdict survives, alone
    assert trim("position", {**why, "side": "LONG"}) == why


def test_an_unknown_read_command_is_recognised_in_both_wordings() -> None:
    """Redis 6.2 has no EVALSHA_RO: its error reply, and on a cluster redis-py's own
    refusal to route it (raised before sending), both make the reader fall back."""
    assert unknown_command(rexc.ResponseError("ERR unknown command `EVALSHA_RO`, with args"))
    assert unknown_command(rexc.RedisError("EVALSHA_RO command doesn't exist in Redis commands"))
    assert not unknown_command(rexc.ResponseError("NOPERM this user has no permissions"))
    assert not unknown_command("unknown command")  # a value, not an error


def test_decode_reply() -> None:
    limits = InputLimits(fields=10, value_bytes=100)
    names = USED_FIELDS["risk"]
    assert decode_reply("risk", "k", None, limits, "used") is None
    assert decode_reply("risk", "k", [None] * len(names), limits, "used") == {}
    values = ["0.02" if n == "stop_dist_pct" else None for n in names]
    assert decode_reply("risk", "k", values, limits, "used") == {"stop_dist_pct": "0.02"}
    assert decode_reply("risk", "k", "fields 11", limits, "used") == {
        OVERSIZED: "k has 11 fields (limit MAX_INPUT_FIELDS=10)"
    }
    assert decode_reply("risk", "k", "bytes proposed_sl 101", limits, "all") == {
        OVERSIZED: "k field proposed_sl is 101 bytes (limit MAX_INPUT_VALUE_BYTES=100)"
    }
    # a producer's field that happens to carry the marker's name is not a verdict
    pairs = ["stop_dist_pct", "0.02", OVERSIZED, "x"]
    assert decode_reply("risk", "k", pairs, limits, "all") == {"stop_dist_pct": "0.02"}
    error = ValueError("WRONGTYPE")
    assert decode_reply("risk", "k", error, limits, "used") is error


@pytest.mark.parametrize(
    ("text", "what"),
    [
        # Redis 7.0 and Valkey 8 wordings
        ("this user has no permissions to run the 'hgetall' command", "command hgetall"),
        ("User u has no permissions to run the 'client|setname' command", "command client|setname"),
        ("The user executing the script can't run this command or subcommand [HMGET] script: "
         "abc, on @user_script:9.", "command hmget"),
        ("ACL failure in script: User u has no permissions to run the 'memory|usage' command "
         "[MEMORY|USAGE] script: abc", "command memory|usage"),
        ("this user has no permissions to access one of the keys used as arguments", "key access"),
        ("No permissions to access a key", "key access"),
        ("this user has no permissions to access one of the channels used as arguments",
         "channel access"),
        ("Transaction discarded because of: NOPERM User u has no permissions to run the 'exec' "
         "command", "command exec"),
    ],
)  # fmt: skip
def test_acl_refusals_name_what_was_refused(text: str, what: str) -> None:
    error = refused("doing it", RuntimeError(text))
    assert isinstance(error, PermissionDenied)
    assert error.what == f"{what} while doing it"
    assert str(error).startswith(f"permission denied: {what} while doing it ({text})")
    assert "\n" not in str(error)


def test_other_refusals_are_outages() -> None:
    error = refused("writing", RuntimeError("OOM command not allowed"))
    assert type(error) is RedisUnavailable
    assert str(error) == "writing: OOM command not allowed"


_NO_PASSWORD = (
    "AUTH <password> called without any password configured for the default user. "
    "Are you sure your configuration is correct?"
)


@pytest.mark.parametrize(
    ("raised", "kind", "text"),
    [
        (rexc.ConnectionError("Error 111 connecting"), RedisUnavailable,
         "reading: ConnectionError: Error 111 connecting"),
        (rexc.TimeoutError("Timeout reading"), RedisUnavailable,
         "reading: TimeoutError: Timeout reading"),
        (rexc.ResponseError("OOM command not allowed"), RedisUnavailable,
         "reading: OOM command not allowed"),
        (rexc.NoPermissionError("User u has no permissions to run the 'hgetall' command"),
         PermissionDenied, "permission denied: command hgetall while reading"),
        (rexc.AuthenticationError("invalid username-password pair"), AuthenticationFailed,
         "reading: Redis refused our credentials (invalid username-password pair); check the"),
        (rexc.ResponseError(_NO_PASSWORD), AuthenticationFailed,
         "reading: Redis refused our credentials (AUTH <password> called without any password"),
    ],
)  # fmt: skip
async def test_redis_errors_translates_each_kind_once(
    raised: Exception, kind: type[RedisUnavailable], text: str
) -> None:
    with pytest.raises(RedisUnavailable) as caught:
        async with redis_errors("reading"):
            raise raised
    assert type(caught.value) is kind
    assert str(caught.value).startswith(text)
    assert caught.value.__cause__ is raised


async def test_an_unneeded_password_is_named_as_such() -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        async with redis_errors("connecting"):
            raise rexc.ResponseError(_NO_PASSWORD)
    assert "the server has no password: remove it from REDIS_URL" in str(caught.value)


@pytest.mark.parametrize(
    "reply", ["WRONGTYPE Operation against a key holding the wrong kind of value", "NOPERM x"]
)
async def test_redis_errors_without_replies_leaves_error_replies_to_the_caller(
    reply: str,
) -> None:
    with pytest.raises(rexc.ResponseError):
        async with redis_errors("reading", replies=False):
            raise rexc.ResponseError(reply)
    with pytest.raises(RedisUnavailable):
        async with redis_errors("reading", replies=False):
            raise rexc.ConnectionError("gone")


async def test_redis_errors_leaves_other_errors_alone() -> None:
    with pytest.raises(ValueError, match="a bug"):
        async with redis_errors("reading"):
            raise ValueError("a bug")
