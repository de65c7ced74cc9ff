"""What differs between the two deployments `serve` composes: one server (or the primary
Sentinel names) and a Redis Cluster (INTERFACE §7). Each builds its clients, its reader and
sink, its change source and names its lease kind; everything else is shared (service/app.py).

The cold paths (discovery, proposals read back, liveness) run on redis-py; the hot paths
(input reads, proposal writes, notifications) on connections of their own (the wire).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, TypedDict

from harvest_async.backoff import RedisOutage
from harvest_async.config import Settings
from harvest_async.redis_io.client import client_for, describe_url, endpoint_for
from harvest_async.redis_io.cluster.cluster_leases import ClusterLeases
from harvest_async.redis_io.cluster.cluster_notifications import ClusterSource
from harvest_async.redis_io.cluster.cluster_outage import ClusterOutage
from harvest_async.redis_io.cluster.cluster_reader import ClusterInputReader
from harvest_async.redis_io.cluster.cluster_sink import ClusterSink
from harvest_async.redis_io.cluster.setup import cluster_client
from harvest_async.redis_io.cluster.topology import SlotMap
from harvest_async.redis_io.inputs_io import InputLimits
from harvest_async.redis_io.leases import FenceFor, Leases
from harvest_async.redis_io.notifications import KeyspaceSource
from harvest_async.redis_io.reader import RedisInputReader
from harvest_async.redis_io.sink import RedisSink
from harvest_async.service.group import GroupMember

__all__ = ["Cluster", "Deployment", "OneServer", "deployment_for"]


@dataclass(frozen=True)
class OneServer:
    """One server, or the primary Sentinel names."""

    settings: Settings
    leases: ClassVar[type[Leases]] = Leases

    def client(self) -> Any:
        settings = self.settings
        timeout = settings.redis_timeout_sec
        return client_for(
            settings.redis_url, settings.redis_password, retries=0, socket_timeout=timeout
        )

    def reader_and_sink(
        self, client: Any, member: GroupMember | None
    ) -> tuple[RedisInputReader, RedisSink]:
        settings = self.settings
        timeout = settings.redis_timeout_sec
        endpoint = endpoint_for(settings)
        reader = RedisInputReader(
            client, settings.keys, endpoint, timeout=timeout, limits=InputLimits.of(settings)
        )
        sink = RedisSink(endpoint, settings.keys, **_sink_options(settings, member))
        return reader, sink

    def outage(self, log: logging.Logger) -> RedisOutage:
        """One outage for every reconnect loop: a WARNING, reminders, one INFO."""
        settings = self.settings
        return RedisOutage(
            describe_url(settings.redis_url), log, remind_every=settings.outage_reminder_sec
        )

    def source(self, outage: RedisOutage) -> KeyspaceSource:
        settings = self.settings
        return KeyspaceSource(
            settings.redis_url,
            settings.redis_password,
            settings.keys,
            instance=settings.instance,
            input_streams=settings.input_streams,
            poll_interval=settings.poll_interval_sec,
            canary_timeout=settings.canary_timeout_sec,
            outage=outage,
        )


@dataclass(frozen=True)
class Cluster:
    """A Redis Cluster: reads, writes and notifications routed by slot (redis_io/cluster)."""

    settings: Settings
    slots: SlotMap
    leases: ClassVar[type[Leases]] = ClusterLeases  # no scripts in pipelines on a cluster

    def client(self) -> Any:
        return cluster_client(self.settings)

    def reader_and_sink(
        self, client: Any, member: GroupMember | None
    ) -> tuple[ClusterInputReader, ClusterSink]:
        settings, slots = self.settings, self.slots
        timeout = settings.redis_timeout_sec
        reader = ClusterInputReader(
            client, settings.keys, slots, timeout=timeout, limits=InputLimits.of(settings)
        )
        sink = ClusterSink(slots, settings.keys, **_sink_options(settings, member))
        return reader, sink

    def outage(self, log: logging.Logger) -> ClusterOutage:
        """Node by node: one WARNING per lost node, one INFO once every slot is served."""
        settings = self.settings
        return ClusterOutage(
            describe_url(settings.redis_url),
            log,
            self.slots,
            remind_every=settings.outage_reminder_sec,
        )

    def source(self, outage: RedisOutage) -> ClusterSource:
        settings, slots = self.settings, self.slots
        return ClusterSource(
            settings.redis_url,
            settings.redis_password,
            settings.keys,
            slots,
            instance=settings.instance,
            input_streams=settings.input_streams,
            poll_interval=settings.poll_interval_sec,
            canary_timeout=settings.canary_timeout_sec,
            outage=outage if isinstance(outage, ClusterOutage) else None,
        )


Deployment = OneServer | Cluster


def deployment_for(settings: Settings, slots: SlotMap | None) -> Deployment:
    """`slots`: the cluster's slot map, None on one server or via Sentinel."""
    return OneServer(settings) if slots is None else Cluster(settings, slots)


class _SinkOptions(TypedDict):
    enable_stream: bool
    stream_maxlen: int
    proposal_ttl: float
    timeout: float
    fence: FenceFor | None


def _sink_options(settings: Settings, member: GroupMember | None) -> _SinkOptions:
    """What both sinks take from the settings (and the group member's fence)."""
    return {
        "enable_stream": settings.enable_stream,
        "stream_maxlen": settings.stream_maxlen,
        "proposal_ttl": settings.proposal_ttl_sec,
        "timeout": settings.redis_timeout_sec,
        "fence": member.fence if member is not None else None,
    }
