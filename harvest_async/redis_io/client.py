"""Redis connections: one place that creates clients and translates redis errors."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff

from harvest_async.config import Settings
from harvest_async.core.keys import glob_escape
from harvest_async.errors import (
    AuthenticationFailed,
    ConfigError,
    PermissionDenied,
    RedisReplyError,
    RedisUnavailable,
)
from harvest_async.redis_io.wire import Endpoint, Wire, command, endpoint_from_url

__all__ = [
    "REDIS_ERRORS",
    "REDIS_OR_REPLY_ERRORS",
    "Client",
    "ResponseError",
    "check_redis",
    "client_for",
    "denied_command",
    "describe_url",
    "endpoint_for",
    "is_auth_error",
    "is_permission_error",
    "refused",
    "scan_symbols",
    "translate",
]

T = TypeVar("T")

# The client type the rest of the package handles (created only by `client_for`), and the
# error reply it raises: tools catch these without importing redis themselves.
Client = aioredis.Redis
ResponseError = rexc.ResponseError

# Errors that mean "Redis is not usable right now" (not a bug in our command).
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.AuthenticationError,
    rexc.BusyLoadingError,
    OSError,
)
# ... or an error reply: a refusal (NOPERM, OOM, WRONGTYPE, ...) to report, not a crash
REDIS_OR_REPLY_ERRORS: tuple[type[BaseException], ...] = (*REDIS_ERRORS, rexc.ResponseError)


def client_for(
    url: str,
    password: str | None = None,
    *,
    retries: int = 0,
    socket_timeout: float | None = 5.0,
    name: str = "harvest-async",
) -> aioredis.Redis:
    """A decode_responses client. `retries=0` for writers: a replayed MULTI/EXEC after a
    timeout could append a second audit entry, so the publisher decides itself."""
    retry = (
        Retry(ExponentialBackoff(cap=1.0, base=0.05), retries) if retries else Retry(NoBackoff(), 0)
    )
    kwargs: dict[str, Any] = {
        "decode_responses": True,
        # a producer writing bytes that are not UTF-8 must not crash the reader: the value
        # decodes with U+FFFD, is not a number, and the symbol is retracted as invalid
        "encoding_errors": "replace",
        "retry": retry,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 5.0,
        "client_name": name,
    }
    if password is not None:
        kwargs["password"] = password
    return aioredis.Redis.from_url(url, **kwargs)


_AUTH_MARKERS = (
    "noauth",
    "wrongpass",
    "authentication required",
    "invalid password",
    "invalid username-password",
    # redis-py 8 reports a failed AUTH during the handshake this way
    "hello must be called with the client already authenticated",
)


def is_auth_error(text: str) -> bool:
    """Whether a Redis error message means our credentials were refused."""
    lowered = text.lower()
    return any(marker in lowered for marker in _AUTH_MARKERS)


# How Redis 6.2/7.x and Valkey word an ACL refusal: NOPERM replies, redis-py's wrapping
# of a refused CLIENT SETNAME, and a refusal inside a script (Redis 7.0 names no command)
_PERMISSION_MARKERS = ("noperm", "no permissions", "can't run this command", "acl failure")
_DENIED_COMMAND = re.compile(r"run the '([^']+)' command|\[([A-Z|]+)\]")


def is_permission_error(text: str) -> bool:
    """Whether a Redis error message means our ACL user may not do that."""
    lowered = text.lower()
    return any(marker in lowered for marker in _PERMISSION_MARKERS)


def denied_command(text: str) -> str | None:
    """The command an ACL refusal names (`hgetall`, `client|setname`), if it names one."""
    found = _DENIED_COMMAND.search(text)
    return (found.group(1) or found.group(2)).lower() if found else None


def refused(context: str, exc: BaseException) -> RedisUnavailable:
    """The project's error for a failed Redis call made while `context`: PermissionDenied
    (naming the command, or the kind of access, when Redis says) for an ACL refusal."""
    text = str(exc)
    if not is_permission_error(text):
        return RedisUnavailable(f"{context}: {text}")
    command = denied_command(text)
    if command:
        thing = f"command {command}"
    elif "channel" in text.lower():
        thing = "channel access"
    else:
        thing = "key access"
    return PermissionDenied(f"{thing} while {context}", text)


async def scan_symbols(client: aioredis.Redis, prefix: str, limit: int | None = None) -> list[str]:
    """The non-empty suffixes of the keys starting with `prefix` (SCAN, not KEYS)."""
    found: list[str] = []
    async for key in client.scan_iter(match=glob_escape(prefix) + "*", count=1000):
        if len(key) > len(prefix):
            found.append(key[len(prefix) :])
            if limit is not None and len(found) >= limit:
                break
    return found


def endpoint_for(settings: Settings) -> Endpoint:
    """Where the wire connects: REDIS_URL with the password from REDIS_PASSWORD_FILE."""
    try:
        return endpoint_from_url(settings.redis_url, settings.redis_password)
    except ValueError as exc:
        raise ConfigError("REDIS_URL", str(exc)) from None


def describe_url(url: str) -> str:
    """The URL without credentials, for logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


async def translate(call: Callable[[], Awaitable[T]], what: str) -> T:
    try:
        return await call()
    except REDIS_ERRORS as exc:
        raise RedisUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc


@asynccontextmanager
async def closing(client: aioredis.Redis) -> AsyncIterator[aioredis.Redis]:
    try:
        yield client
    finally:
        await client.aclose()


async def check_redis(settings: Settings) -> None:
    """Fail fast (exit 3) with one clear line when Redis is unreachable or refuses us.

    One PING on a connection of the wire's: credentials refused are told apart by the
    reply's error code (WRONGPASS, NOAUTH), an ACL refusal (NOPERM) is PermissionDenied.
    """
    where = describe_url(settings.redis_url)
    wire = Wire(endpoint_for(settings), name="harvest-async-check")
    try:
        (reply,) = await wire.roundtrip(command("PING"), 1)
    except PermissionDenied:
        raise
    except AuthenticationFailed as exc:
        raise AuthenticationFailed(
            f"Redis at {where} refused our credentials ({exc}); check the password "
            "(REDIS_URL, REDIS_PASSWORD_FILE or the redis-password credential)"
        ) from exc
    except RedisUnavailable as exc:
        raise RedisUnavailable(f"cannot reach Redis at {where}: {exc}") from exc
    finally:
        wire.close()
    if isinstance(reply, RedisReplyError):
        raise refused(f"connecting to Redis at {where} (PING)", reply)
