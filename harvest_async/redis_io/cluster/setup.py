"""Choosing cluster mode at start (REDIS_CLUSTER, INTERFACE §7) and what it needs: the
slot map and redis-py's cluster client for the cold paths."""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio.cluster import RedisCluster

from harvest_async.config import Settings
from harvest_async.errors import ConfigError, PermissionDenied, RedisUnavailable
from harvest_async.redis_io.client import describe_url, endpoint_for
from harvest_async.redis_io.cluster.topology import SlotMap, cluster_mode, is_cluster

__all__ = ["cluster_client", "cluster_slots", "refuse_cluster"]

log = logging.getLogger(__name__)


async def cluster_slots(settings: Settings) -> SlotMap | None:
    """The cluster's slot map when the service runs in cluster mode, else None.

    `auto` asks the server (INFO cluster); `true` insists (a server not in cluster mode
    is a configuration error, exit 2). Settings a cluster cannot honour stop the start.
    """
    if settings.redis_cluster == "false" or settings.redis_url.startswith(
        ("unix://", "redis+sentinel://")
    ):
        return None
    endpoint = endpoint_for(settings)
    detected = await cluster_mode(endpoint, limit=settings.redis_timeout_sec)
    if detected is None:
        # the ACL allows neither INFO nor CLUSTER SLOTS (the documented one-server ACL):
        # one server, unless REDIS_CLUSTER says otherwise; a cluster node's MOVED replies
        # to the startup ACL check's probes would stop the start (verify_permissions)
        if settings.redis_cluster == "true":
            raise PermissionDenied(
                "command cluster|slots", "a Redis Cluster's slot map is read with CLUSTER SLOTS"
            )
        return None
    if not detected:
        if settings.redis_cluster == "true":
            raise ConfigError(
                "REDIS_CLUSTER",
                f"true, but {describe_url(settings.redis_url)} is not in cluster mode",
            )
        return None
    if endpoint.db != 0:
        raise ConfigError("REDIS_URL", f"a Redis Cluster has only database 0, got db {endpoint.db}")
    slots = SlotMap(endpoint, timeout=settings.redis_timeout_sec)
    await slots.refresh("start")
    log.info(
        "Redis Cluster: %d primaries (%s); one notification listener per primary",
        len(slots.primaries),
        ", ".join(f"{h}:{p}" for h, p in slots.primaries),
        extra={"event": "cluster"},
    )
    return slots


def cluster_client(settings: Settings) -> Any:
    """redis-py's cluster client (cold paths: discovery, proposals read back, liveness).
    Typed Any: it is not a `redis.asyncio.Redis`, but offers what those paths call."""
    kwargs: dict[str, Any] = {
        "decode_responses": True,
        "encoding_errors": "replace",
        "socket_timeout": settings.redis_timeout_sec,
        "socket_connect_timeout": 5.0,
        "client_name": "harvest-async",
    }
    if settings.redis_password is not None:
        kwargs["password"] = settings.redis_password
    return RedisCluster.from_url(settings.redis_url, **kwargs)


async def refuse_cluster(settings: Settings, command: str) -> None:
    """Stop `command` (exit 2) on a Redis Cluster, which it does not support yet: its
    transactions and subscription assume one server (record, watch, replay --into)."""
    if settings.redis_cluster == "false" or not settings.redis_url.startswith(
        ("redis://", "rediss://")
    ):
        return
    try:
        cluster = await is_cluster(endpoint_for(settings), limit=settings.redis_timeout_sec)
    except RedisUnavailable:
        return  # the command's own check says so, in its words
    if cluster:
        raise ConfigError(
            "REDIS_URL",
            f"{describe_url(settings.redis_url)} is a Redis Cluster node: `{command}` does not "
            "support Redis Cluster yet (run it against one server, or a Sentinel deployment)",
        )
