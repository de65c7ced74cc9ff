"""Redis connections: one place that creates clients and translates redis errors."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff

from harvest_async.config import Settings
from harvest_async.config.sentinel_url import is_sentinel_url, mask_url, parse_sentinel_url
from harvest_async.core.keys import glob_escape
from harvest_async.errors import (
    AuthenticationFailed,
    ConfigError,
    PermissionDenied,
    RedisReplyError,
    RedisUnavailable,
)
from harvest_async.redis_io.sentinel import ask_primary, ask_replicas
from harvest_async.redis_io.server_version import judge, parse_info
from harvest_async.redis_io.wire import Endpoint, Wire, command, endpoint_from_url
from harvest_async.redis_io.wire_url import Sentinels, tls_version

log = logging.getLogger(__name__)

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
    "hgetall_many",
    "is_auth_error",
    "is_permission_error",
    "redis_error",
    "redis_errors",
    "refused",
    "scan_symbols",
    "sentinel_nodes",
    "unneeded_password",
]

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
    # redis-py's cluster client (cluster mode): retries exhausted during a failover, or a
    # slot its map has no node for yet
    rexc.ClusterError,
    rexc.SlotNotCoveredError,
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
    protocol: int | None = None,
) -> aioredis.Redis:
    """A decode_responses client. `retries=0` for writers: a replayed MULTI/EXEC after a
    timeout could append a second audit entry, so the publisher decides itself.
    `protocol=2`: authenticate as the service's wire does (see `check_redis`)."""
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
    if protocol is not None:
        kwargs["protocol"] = protocol
    if is_sentinel_url(url):
        return _primary_client(url, kwargs)
    return aioredis.Redis.from_url(url, **kwargs)


class _FollowingPool(SentinelConnectionPool):
    """redis-py's Sentinel pool, dropping its idle connections once a failover has been
    announced (`Sentinels.switches`, followed by the notification source): until the
    sentinels demote it the old primary still accepts writes, and they would be lost."""

    deployment: Sentinels | None = None
    seen = 0

    async def get_connection(self, *args: Any, **options: Any) -> Any:
        deployment = self.deployment
        if deployment is not None and deployment.switches != self.seen:
            self.seen = deployment.switches
            await self.disconnect(inuse_connections=False)
        return await super().get_connection(*args, **options)  # type: ignore[no-untyped-call]


class _PrimaryClient(aioredis.Redis):
    """A client of the primary a Sentinel names (redis-py's Sentinel pool: it asks again
    at each new connection, and drops a connection that answers READONLY); closing it
    closes its connections to the sentinels too."""

    sentinels: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            if self.sentinels is not None:
                # one by one: `Sentinel.aclose()` is newer than redis-py 5.0.1, our minimum
                for sentinel in self.sentinels.sentinels:
                    await sentinel.aclose()


def _primary_client(url: str, kwargs: dict[str, Any]) -> aioredis.Redis:
    try:
        endpoint = endpoint_from_url(url)  # the wire's reading of it, validated
    except ValueError as exc:
        raise ConfigError("REDIS_URL", str(exc)) from None
    deployment = endpoint.sentinel
    assert deployment is not None
    kwargs["socket_connect_timeout"] = endpoint.connect_timeout
    # RESP2 to the sentinels, as the wire's discovery: no HELLO, which older ones lack
    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": endpoint.connect_timeout,
        "socket_timeout": 5.0,
        "protocol": 2,
    }
    if deployment.password is not None:
        sentinel_kwargs["password"] = deployment.password
        sentinel_kwargs["username"] = deployment.username
    if deployment.tls is not None:
        tls = _tls_kwargs(url)
        sentinel_kwargs.update(tls)
        kwargs.update(tls)
    if endpoint.password is not None:
        kwargs["password"] = endpoint.password  # the URL's wins, as with redis://
    if endpoint.username is not None:
        kwargs["username"] = endpoint.username
    sentinel = Sentinel(list(deployment.addresses), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    client = sentinel.master_for(
        deployment.service,
        redis_class=_PrimaryClient,
        connection_pool_class=_FollowingPool,
        db=endpoint.db,
        **kwargs,
    )
    assert isinstance(client, _PrimaryClient)
    assert isinstance(client.connection_pool, _FollowingPool)
    client.connection_pool.deployment = deployment
    client.connection_pool.seen = deployment.switches
    client.sentinels = sentinel
    return client


def _tls_kwargs(url: str) -> dict[str, Any]:
    """rediss+sentinel://: redis-py's TLS arguments from the URL's `ssl_*` options, read
    by redis-py's own URL parser as for rediss:// (so both take the same values)."""
    options = parse_sentinel_url(url).tls_options()
    # read here, as the wire reads it (`TLSv1_2` or a number): redis-py before 5.1 passes
    # the text on unparsed, and never took the name
    version = options.pop("ssl_min_version", None)
    try:
        parsed = parse_url(f"rediss://localhost/?{urlencode(options)}")
        tls = {k: v for k, v in parsed.items() if k.startswith("ssl_")}
        if version is not None:
            tls["ssl_min_version"] = tls_version(version)
    except ValueError as exc:  # "ssl_min_version: unknown TLS version ...", or redis-py's
        raise ConfigError("REDIS_URL", str(exc)) from None
    return {"ssl": True} | tls


# a password given to a server that has none: AUTH fails (Redis 6+, Valkey; Redis 5)
_UNNEEDED_PASSWORD_MARKERS = ("without any password configured", "no password is set")
_AUTH_MARKERS = (
    "noauth",
    "wrongpass",
    "authentication required",
    "invalid password",
    "invalid username-password",
    # redis-py 8 reports a failed AUTH during the handshake this way
    "hello must be called with the client already authenticated",
    *_UNNEEDED_PASSWORD_MARKERS,
)


def is_auth_error(text: str) -> bool:
    """Whether a Redis error message means our credentials were refused."""
    lowered = text.lower()
    return any(marker in lowered for marker in _AUTH_MARKERS)


def unneeded_password(text: str) -> bool:
    """Whether an AUTH refusal says the server has no password (one was given anyway)."""
    lowered = text.lower()
    return any(marker in lowered for marker in _UNNEEDED_PASSWORD_MARKERS)


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


def redis_error(context: str, exc: BaseException) -> RedisUnavailable:
    """The project's error for a redis-py error raised while `context`: PermissionDenied
    for an ACL refusal (naming the command, or the kind of access, when Redis says),
    AuthenticationFailed for refused credentials, RedisUnavailable for the rest (the server
    is unreachable, or answered with an error reply: OOM, LOADING, WRONGTYPE...)."""
    text = str(exc)
    if is_permission_error(text):
        command = denied_command(text)
        if command:
            thing = f"command {command}"
        elif "channel" in text.lower():
            thing = "channel access"
        else:
            thing = "key access"
        return PermissionDenied(f"{thing} while {context}", text)
    if is_auth_error(text):
        hint = (
            "the server has no password: remove it from REDIS_URL / REDIS_PASSWORD_FILE"
            if unneeded_password(text)
            else "check the password (REDIS_URL, REDIS_PASSWORD_FILE or the redis-password "
            "credential)"
        )
        return AuthenticationFailed(f"{context}: Redis refused our credentials ({text}); {hint}")
    if isinstance(exc, REDIS_ERRORS):  # no reply: say what failed (ConnectionError, ...)
        return RedisUnavailable(f"{context}: {type(exc).__name__}: {text}")
    return RedisUnavailable(f"{context}: {text}")  # the server's error reply


refused = redis_error  # the name the write and notification paths use


@asynccontextmanager
async def redis_errors(context: str, *, replies: bool = True) -> AsyncIterator[None]:
    """Translate the redis-py errors raised inside the block (see `redis_error`):

        async with redis_errors("reading the liveness keys"):
            ...

    `replies=False`: only the errors that say Redis is unreachable or refuses our
    credentials; error replies (NOPERM, WRONGTYPE, ...) go through as `ResponseError`, for
    a caller that tells them apart itself."""
    caught = REDIS_OR_REPLY_ERRORS if replies else REDIS_ERRORS
    try:
        yield
    except caught as exc:
        raise redis_error(context, exc) from exc


async def hgetall_many(
    client: aioredis.Redis, keys: Sequence[str], *, chunk: int = 500
) -> list[dict[str, str]]:
    """Whole hashes (`{}`: absent), `chunk` keys per pipelined round trip."""
    out: list[dict[str, str]] = []
    for start in range(0, len(keys), chunk):
        async with client.pipeline(transaction=False) as pipe:
            for key in keys[start : start + chunk]:
                pipe.hgetall(key)
            out.extend(await pipe.execute())
    return out


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
    return mask_url(url)


async def sentinel_nodes(settings: Settings) -> tuple[str, dict[str, str | None]] | None:
    """Via Sentinel (None for other URLs): ("host:port" of the primary the sentinels name,
    {"host:port": its notify-keyspace-events (None: not readable)} for each replica they
    know): a replica promoted without the flags would leave the service polling."""
    endpoint = endpoint_for(settings)
    if endpoint.sentinel is None:
        return None
    budget = endpoint.connect_timeout
    host, port = await ask_primary(endpoint.sentinel, budget)
    flags: dict[str, str | None] = {}
    for replica_host, replica_port in await ask_replicas(endpoint.sentinel, budget):
        wire = Wire(endpoint.at(replica_host, replica_port), name="harvest-async-check")
        try:
            (reply,) = await wire.roundtrip(command("CONFIG", "GET", "notify-keyspace-events"), 1)
        except RedisUnavailable:
            reply = None
        finally:
            wire.close()
        value = reply[1] if isinstance(reply, list) and len(reply) == 2 else None
        flags[f"{replica_host}:{replica_port}"] = str(value) if value is not None else None
    return f"{host}:{port}", flags


async def check_redis(settings: Settings) -> None:
    """Fail fast with one clear line when Redis is unreachable or refuses us (exit 3), or
    is older than the oldest supported server (exit 2).

    PING then INFO on a connection of the wire's (RESP2 AUTH, as the service's own
    connections: it refuses a password the server does not have, where RESP3's HELLO
    would accept it): credentials refused are told apart by the reply's error code
    (WRONGPASS, NOAUTH), an ACL refusal (NOPERM) is PermissionDenied.
    """
    where = describe_url(settings.redis_url)
    wire = Wire(endpoint_for(settings), name="harvest-async-check")
    try:
        reply, info = await wire.roundtrip(command("PING") + command("INFO", "server"), 2)
    except PermissionDenied:
        raise
    except AuthenticationFailed as exc:
        raise redis_error(f"connecting to Redis at {where}", exc) from exc
    except RedisUnavailable as exc:
        raise RedisUnavailable(f"cannot reach Redis at {where}: {exc}") from exc
    finally:
        wire.close()
    if isinstance(reply, RedisReplyError):
        raise refused(f"connecting to Redis at {where} (PING)", reply)
    if isinstance(info, RedisReplyError):  # INFO denied by the ACL: run on trust
        log.debug("cannot read the server's version at %s (%s); not checked", where, info)
    else:
        judge(parse_info(str(info)), where)
