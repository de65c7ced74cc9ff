"""Choosing cluster mode at start (REDIS_CLUSTER, INTERFACE §7) and what it needs: the
slot map and redis-py's cluster client for the cold paths."""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio.cluster import RedisCluster

from harvest_async.config import Settings
from harvest_async.config.sentinel_url import is_sentinel_url
from harvest_async.errors import ConfigError, PermissionDenied
from harvest_async.redis_io.client import describe_url, endpoint_for
from harvest_async.redis_io.cluster.topology import SlotMap, cluster_state

__all__ = ["cluster_client", "cluster_mode", "cluster_slots", "tool_slots"]

log = logging.getLogger(__name__)


async def cluster_mode(settings: Settings) -> bool:
    """Whether REDIS_URL is to be used as a Redis Cluster: `auto` asks the server (INFO
    cluster, else CLUSTER SLOTS); `true` insists (a server not in cluster mode is a
    configuration error, exit 2); a Unix socket or Sentinel URL never is."""
    url = settings.redis_url
    if settings.redis_cluster == "false" or url.startswith("unix://") or is_sentinel_url(url):
        return False
    endpoint = endpoint_for(settings)
    detected = await cluster_state(endpoint, limit=settings.redis_timeout_sec)
    if detected is None:
        # the ACL allows neither INFO nor CLUSTER SLOTS (the documented one-server ACL):
        # one server, unless REDIS_CLUSTER says otherwise; a cluster node's MOVED replies
        # to the startup ACL check's probes would stop the start (verify_permissions)
        if settings.redis_cluster == "true":
            raise PermissionDenied(
                "command cluster|slots", "a Redis Cluster's slot map is read with CLUSTER SLOTS"
            )
        return False
    if not detected:
        if settings.redis_cluster == "true":
            raise ConfigError(
                "REDIS_CLUSTER",
                f"true, but {describe_url(settings.redis_url)} is not in cluster mode",
            )
        return False
    if endpoint.db != 0:
        raise ConfigError("REDIS_URL", f"a Redis Cluster has only database 0, got db {endpoint.db}")
    return True


async def cluster_slots(settings: Settings) -> SlotMap | None:
    """The cluster's slot map when the service runs in cluster mode (`cluster_mode`), else
    None. Settings a cluster cannot honour stop the start."""
    if not await cluster_mode(settings):
        return None
    slots = SlotMap(endpoint_for(settings), timeout=settings.redis_timeout_sec)
    await slots.refresh("start")
    log.info(
        "Redis Cluster: %d primaries (%s); one notification listener per primary",
        len(slots.primaries),
        ", ".join(f"{h}:{p}" for h, p in slots.primaries),
        extra={"event": "cluster"},
    )
    return slots


async def tool_slots(settings: Settings) -> SlotMap | None:
    """The tools' view (watch): the slot map, not read yet, when REDIS_URL is used as a
    Redis Cluster (`cluster_mode`), else None."""
    if not await cluster_mode(settings):
        return None
    return SlotMap(endpoint_for(settings), timeout=settings.redis_timeout_sec)


def cluster_client(settings: Settings, *, name: str = "harvest-async") -> Any:
    """redis-py's cluster client (cold paths: discovery, proposals read back, liveness;
    the tools' reads and writes). Typed Any: it is not a `redis.asyncio.Redis`, but
    offers what those paths call."""
    kwargs: dict[str, Any] = {
        "decode_responses": True,
        "encoding_errors": "replace",
        "socket_timeout": settings.redis_timeout_sec,
        "socket_connect_timeout": 5.0,
        "client_name": name,
    }
    if settings.redis_password is not None:
        kwargs["password"] = settings.redis_password
    return RedisCluster.from_url(settings.redis_url, **kwargs)
