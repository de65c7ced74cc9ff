"""The `redis` and `notifications` checks: can the service talk to this server, and will
the server tell it when an input changes."""

from __future__ import annotations

import contextlib
from typing import Any

from harvest_async.clock import monotonic
from harvest_async.config import Settings
from harvest_async.errors import RedisUnavailable
from harvest_async.redis_io.client import (
    REDIS_OR_REPLY_ERRORS,
    Client,
    ResponseError,
    describe_url,
    is_auth_error,
    is_permission_error,
    sentinel_nodes,
    unneeded_password,
)
from harvest_async.redis_io.cluster.nodes import cluster_node_flags
from harvest_async.redis_io.notifications import notify_flags_cover, read_notify_flags
from harvest_async.redis_io.server_version import (
    SUPPORTED,
    ServerVersion,
    predates_hello,
    support,
)
from harvest_async.tools.doctor.report import Check, Context

__all__ = ["check_notifications", "check_redis"]

_AUTH_ACTION = (
    "check the password: REDIS_URL (redis://:PASSWORD@host or user:password@), "
    "REDIS_PASSWORD_FILE, or the systemd credential redis-password; and the ACL user's rights"
)
_UNNEEDED_ACTION = (
    "the server has no password: remove it from REDIS_URL (redis://:PASSWORD@host), "
    "REDIS_PASSWORD_FILE or the systemd credential redis-password, or set one on the "
    "server (requirepass, or an ACL user); `run` refuses to start the same way"
)
_CONFIG_HINT = (
    "put `notify-keyspace-events KEA` in the server's config file (redis.conf) or on its "
    "command line (--notify-keyspace-events KEA); a CONFIG SET alone is forgotten at the "
    "next restart"
)


async def check_redis(client: Client, settings: Settings) -> Check:
    where = describe_url(settings.redis_url)
    started = monotonic()
    try:
        await client.ping()
        elapsed = monotonic() - started
        info: dict[str, Any] = await client.info("server")
    except REDIS_OR_REPLY_ERRORS as exc:
        if isinstance(exc, ResponseError) and predates_hello(exc):
            return Check(
                name="redis",
                status="FAIL",
                message=f"{where} does not know HELLO, so it predates Redis 6.0: {exc}",
                action=f"harvest-async needs {SUPPORTED}: upgrade the server or point "
                "REDIS_URL at another one",
                details={"error": type(exc).__name__},
            )
        return _refused(where, exc)
    server = ServerVersion.from_info(info)
    verdict, why = support(server)
    config_file = str(info.get("config_file") or "")
    primary = await _primary(settings)
    if primary:
        where = f"{where} (primary {primary}, as the sentinels name it)"
    message = (
        f"{server.flavour} {server.version} at {where} answered PING in {elapsed * 1000:.1f} ms"
    )
    return Check(
        name="redis",
        status="PASS" if verdict == "supported" else "WARN",
        message=message if verdict == "supported" else f"{message}; {why}",
        action=_VERSION_ACTIONS.get(verdict, ""),
        details={
            "flavour": server.flavour,
            "version": server.version,
            "support": verdict,
            "ping_ms": round(elapsed * 1000, 3),
            "config_file": config_file,
            **({"primary": primary} if primary else {}),
        },
    )


async def _primary(settings: Settings) -> str | None:
    """Via Sentinel: the primary's "host:port" (or why it is not known)."""
    try:
        nodes = await sentinel_nodes(settings)
    except RedisUnavailable as exc:
        return f"unknown: {exc}"
    return nodes[0] if nodes else None


_VERSION_ACTIONS = {
    "unsupported": "`harvest-async run` refuses to start on it (exit 2): upgrade the server, "
    "or point REDIS_URL at a supported one",
    "untested": "expected to work; README.md, 'Supported', lists the servers tested",
}


def _refused(where: str, exc: BaseException) -> Check:
    """The FAIL for a server that did not answer PING: refused credentials (or an ACL
    refusal), an error reply, or not reachable at all."""
    text = str(exc)
    details = {"error": type(exc).__name__}
    if unneeded_password(text):
        message = f"{where} has no password, but one is configured: {text}"
        return Check(
            name="redis", status="FAIL", message=message, action=_UNNEEDED_ACTION, details=details
        )
    if is_auth_error(text) or is_permission_error(text):
        what = "refused us" if isinstance(exc, ResponseError) else "refused authentication"
        return Check(
            name="redis",
            status="FAIL",
            message=f"{where} {what}: {text}",
            action=_AUTH_ACTION,
            details=details,
        )
    if isinstance(exc, ResponseError):
        return Check(
            name="redis",
            status="FAIL",
            message=f"{where} answered PING with an error: {text}",
            action="check that REDIS_URL points at a Redis (or Valkey) server that accepts "
            "commands (not loading, not a replica in a bad state)",
            details=details,
        )
    return Check(
        name="redis",
        status="FAIL",
        message=f"cannot reach {where}: {type(exc).__name__}: {exc}",
        action="start Redis or fix REDIS_URL (systemctl status redis-server; docker compose ps)",
        details=details,
    )


async def check_notifications(
    client: Client, settings: Settings, now: float, ctx: Context, instance: str | None
) -> Check:
    nodes = await cluster_node_flags(settings)
    if nodes is not None:  # Redis Cluster: every node's own flags
        return _cluster_notifications(nodes)
    flags = await read_notify_flags(client)
    config_file = ""
    with contextlib.suppress(ResponseError):
        info: dict[str, Any] = await client.info("server")
        config_file = str(info.get("config_file") or "")
    where = f" ({config_file})" if config_file else ""
    hint = _CONFIG_HINT.replace("(redis.conf)", f"({config_file})") if config_file else _CONFIG_HINT
    if flags is None:
        return Check(
            name="notifications",
            status="WARN",
            message="cannot read notify-keyspace-events (CONFIG is disabled or not allowed "
            "for this user); the service relies on its canary to notice missing notifications",
            action=f"make sure the server's config file{where} sets notify-keyspace-events "
            "KEA (at least Khgx)",
            details={"flags": None, "config_file": config_file},
        )
    usable, missing = notify_flags_cover(flags)
    details: dict[str, Any] = {"flags": flags, "missing": missing, "config_file": config_file}
    if not usable:
        return Check(
            name="notifications",
            status="FAIL",
            message=f"notify-keyspace-events={flags!r} lacks {', '.join(missing)}: the service "
            f"cannot see input changes and falls back to polling every "
            f"{settings.poll_interval_sec:g} s",
            action=hint,
            details=details,
        )
    if missing:
        return Check(
            name="notifications",
            status="WARN",
            message=f"notify-keyspace-events={flags!r} lacks {', '.join(missing)}: deleted or "
            "expired inputs are noticed only at the periodic reconcile",
            action=hint,
            details=details,
        )
    replicas = await _replica_flags(settings)
    if replicas:
        details["replicas"] = replicas
        lacking = [f"{at} ({f!r})" for at, f in replicas.items() if f is None or not _covers(f)]
        if lacking:
            return Check(
                name="notifications",
                status="WARN",
                message=f"notify-keyspace-events={flags!r} on the primary, but replica(s) "
                f"{', '.join(lacking)} lack K, h, g or x (or cannot be read): promoted by a "
                "failover, such a replica leaves the service polling",
                action=hint.replace("the server's", "every replica's"),
                details=details,
            )
    on = " on the primary and its replicas" if replicas else ""
    return Check(
        name="notifications",
        status="PASS",
        message=f"notify-keyspace-events={flags!r} covers K, h, g and x{on}",
        details=details,
    )


def _cluster_notifications(nodes: dict[str, str | None]) -> Check:
    """Notifications are node-local on a cluster: every primary needs the flags, and
    every replica (a failover promotes it)."""
    details: dict[str, Any] = {"nodes": nodes}
    unusable = [f"{at} ({f!r})" for at, f in nodes.items() if f is None or not _usable(f)]
    partial = [f"{at} ({f!r})" for at, f in nodes.items() if f is not None and not _covers(f)]
    hint = _CONFIG_HINT.replace("the server's", "every node's")
    primaries = sum(1 for at in nodes if at.endswith("(primary)"))
    if any("(primary)" in n for n in unusable):
        return Check(
            name="notifications",
            status="FAIL",
            message=f"Redis Cluster: node(s) {', '.join(unusable)} lack K and h (or cannot be "
            "read): changes of the keys they serve are seen only by polling",
            action=hint,
            details=details,
        )
    if unusable or partial:
        return Check(
            name="notifications",
            status="WARN",
            message=f"Redis Cluster: node(s) {', '.join(unusable or partial)} lack K, h, g or "
            "x (or cannot be read)",
            action=hint,
            details=details,
        )
    return Check(
        name="notifications",
        status="PASS",
        message=f"Redis Cluster: notify-keyspace-events covers K, h, g and x on every node "
        f"({primaries} primaries, {len(nodes) - primaries} replicas)",
        details=details,
    )


def _usable(flags: str) -> bool:
    return notify_flags_cover(flags)[0]


def _covers(flags: str) -> bool:
    usable, missing = notify_flags_cover(flags)
    return usable and not missing


async def _replica_flags(settings: Settings) -> dict[str, str | None]:
    """Via Sentinel: each replica's notify-keyspace-events ({} otherwise, or unknown)."""
    try:
        nodes = await sentinel_nodes(settings)
    except RedisUnavailable:
        return {}
    return nodes[1] if nodes else {}
