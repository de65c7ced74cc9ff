"""Which server REDIS_URL points at, and whether harvest-async supports it.

Supported, and tested by the integration tier (README, "Supported"): Redis 6.2 and 7.x,
Valkey 8. What the service sends needs no more than Redis 6.0 (HELLO: redis-py 8 opens
every connection with it; HSET with several fields, XADD MAXLEN ~, MULTI/EXEC, SCAN,
XREVRANGE, PSUBSCRIBE are older), and nothing it needs is missing from 6.2. CLIENT
SETINFO (7.2) is sent by redis-py and its refusal ignored. The minimum is the oldest
server tested, 6.2; Valkey implements Redis 7.2, so every Valkey passes it.

`probe_server` is the service's start-up check: a server below the minimum stops it with
one line naming the minimum (UnsupportedServer, exit 2), never a traceback later.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from harvest_async.errors import UnsupportedServer

__all__ = [
    "MINIMUM",
    "SUPPORTED",
    "ServerVersion",
    "Support",
    "judge",
    "parse_info",
    "predates_hello",
    "probe_server",
    "support",
]

log = logging.getLogger(__name__)

Support = Literal["supported", "untested", "unsupported"]

MINIMUM = (6, 2)
# the major versions the integration tier runs on (README "Supported")
_TESTED_MAJORS: dict[str, frozenset[int]] = {"redis": frozenset({6, 7}), "valkey": frozenset({8})}
SUPPORTED = "Redis 6.2 or newer (tested: Redis 6.2 and 7.x, Valkey 8)"


def _numbers(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for part in text.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


class ServerVersion(NamedTuple):
    """What INFO says: the flavour, its own version, and the Redis version it implements."""

    flavour: Literal["redis", "valkey"]
    version: str
    redis_version: str

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> ServerVersion:
        redis_version = str(info.get("redis_version") or "")
        valkey_version = info.get("valkey_version")
        if valkey_version or info.get("server_name") == "valkey":
            return cls("valkey", str(valkey_version or redis_version), redis_version)
        return cls("redis", redis_version, redis_version)

    def __str__(self) -> str:
        return f"{self.flavour.capitalize()} {self.version}"


def support(server: ServerVersion) -> tuple[Support, str]:
    """The verdict on `server` and a sentence saying why."""
    implements = _numbers(server.redis_version)[:2]
    if len(implements) < 2:
        return "untested", f"the server did not report its version ({server.flavour})"
    if implements < MINIMUM:
        return "unsupported", f"{server} is too old: harvest-async needs {SUPPORTED}"
    major = _numbers(server.version)[:1]
    if not major or major[0] not in _TESTED_MAJORS[server.flavour]:
        return "untested", f"{server} has not been tested with harvest-async ({SUPPORTED})"
    return "supported", f"{server} is supported"


def predates_hello(exc: ResponseError) -> bool:
    """The handshake's HELLO was refused as unknown: a server older than Redis 6.0."""
    text = str(exc).lower()
    return "unknown command" in text and "hello" in text


async def probe_server(client: aioredis.Redis, where: str) -> ServerVersion | None:
    """PING (the connection's handshake) and INFO: the server, once it is known to be
    supported. None when INFO is not allowed (an ACL): the service then runs on trust.

    Raises UnsupportedServer (exit 2) for a server below the minimum, and lets the
    client's errors (unreachable, refused credentials) through for the caller.
    """
    try:
        await client.ping()
    except ResponseError as exc:
        if predates_hello(exc):
            raise UnsupportedServer(
                f"the server at {where} does not know HELLO, so it predates Redis 6.0: "
                f"harvest-async needs {SUPPORTED}"
            ) from exc
        raise
    try:
        info: dict[str, Any] = await client.info("server")
    except ResponseError as exc:  # INFO denied by an ACL
        log.debug("cannot read the server's version at %s (%s); not checked", where, exc)
        return None
    return judge(info, where)


def judge(info: Mapping[str, Any], where: str) -> ServerVersion:
    """The server that INFO describes, once it is known to be supported: UnsupportedServer
    (exit 2) below the minimum, one WARNING for a version not tested."""
    server = ServerVersion.from_info(info)
    verdict, why = support(server)
    if verdict == "unsupported":
        raise UnsupportedServer(f"{server} at {where} is too old: harvest-async needs {SUPPORTED}")
    if verdict == "untested":
        log.warning("%s; expected to work", why)
    else:
        log.info("server: %s at %s", server, where)
    return server


def parse_info(text: str) -> dict[str, str]:
    """INFO's reply text ("key:value" lines, "# Section" headers) as a mapping."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, value = line.split(":", 1)
            out[key] = value.strip()
    return out
