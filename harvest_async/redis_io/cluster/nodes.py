"""Every node of a cluster and its `notify-keyspace-events`: what `doctor` checks on a
cluster (notifications are node-local, so every primary needs the flags, and every
replica too, as a failover promotes it)."""

from __future__ import annotations

from harvest_async.config import Settings
from harvest_async.errors import RedisUnavailable
from harvest_async.redis_io.client import endpoint_for
from harvest_async.redis_io.cluster.topology import is_cluster
from harvest_async.redis_io.wire import Endpoint, Wire, command

__all__ = ["cluster_node_flags", "node_flags"]


async def cluster_node_flags(settings: Settings) -> dict[str, str | None] | None:
    """None when REDIS_URL is not a cluster node; else {"host:port (primary|replica)":
    its notify-keyspace-events, None when it cannot be read}. RedisUnavailable when the
    URL's node cannot say."""
    if settings.redis_cluster == "false" or not settings.redis_url.startswith(
        ("redis://", "rediss://")
    ):
        return None
    endpoint = endpoint_for(settings)
    if not await is_cluster(endpoint, limit=settings.redis_timeout_sec):
        return None
    wire = Wire(endpoint, name="harvest-async-check", timeout=settings.redis_timeout_sec)
    try:
        (slots,) = await wire.roundtrip(command("CLUSTER", "SLOTS"), 1)
    finally:
        wire.close()
    if not isinstance(slots, list):
        raise RedisUnavailable(f"CLUSTER SLOTS: {slots}")
    nodes: dict[tuple[str, int], str] = {}
    for row in slots:
        if not isinstance(row, list):
            continue
        for i, node in enumerate(row[2:]):
            if isinstance(node, list) and isinstance(node[1], int):
                host = str(node[0]) or endpoint.host
                nodes.setdefault((host, node[1]), "primary" if i == 0 else "replica")
    flags: dict[str, str | None] = {}
    for (host, port), role in sorted(nodes.items()):
        try:
            value = await node_flags(endpoint.at(host, port))
        except RedisUnavailable:
            value = None
        flags[f"{host}:{port} ({role})"] = value
    return flags


async def node_flags(endpoint: Endpoint, *, limit: float = 3.0) -> str | None:
    """One node's notify-keyspace-events (None: CONFIG GET refused); RedisUnavailable
    when the node cannot be reached."""
    wire = Wire(endpoint, name="harvest-async-check", timeout=limit)
    try:
        (reply,) = await wire.roundtrip(command("CONFIG", "GET", "notify-keyspace-events"), 1)
    finally:
        wire.close()
    value = reply[1] if isinstance(reply, list) and len(reply) == 2 else None
    return str(value) if value is not None else None
