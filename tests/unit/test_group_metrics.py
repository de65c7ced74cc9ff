"""A publisher group's metrics (service.group_metrics), from a member's counters."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from harvest_async.service.group import GroupMember
from harvest_async.service.group_metrics import GROUP_METRIC_NAMES, GroupCollector
from harvest_async.testing import FakeClock


async def no_beats() -> dict[str, Any]:
    return {}


def test_group_metrics_are_served() -> None:
    leases: Any = SimpleNamespace(instance="a", group="g")
    member = GroupMember(leases, FakeClock(0.0), no_beats, partitions=8, ttl=4.0)
    member.held = {1: 3, 2: 3}
    member.stats.takeovers = 2
    member.stats.fenced_writes = 5
    member.stats.members = 3
    member.stats.renewed(0.003)
    member.stats.renewed(7.0)
    registry = CollectorRegistry()
    collector = GroupCollector()
    registry.register(collector)
    assert generate_latest(registry) == b""  # not bound yet
    collector.member = member
    text = generate_latest(registry).decode()
    for name in GROUP_METRIC_NAMES:
        assert name in text
    assert 'harvest_group_partitions_owned{group="g"} 2.0' in text
    assert 'harvest_group_fenced_writes_total{group="g"} 5.0' in text
    assert 'harvest_group_lease_renew_seconds_bucket{group="g",le="0.005"} 1.0' in text
    assert 'harvest_group_lease_renew_seconds_bucket{group="g",le="+Inf"} 2.0' in text
    assert 'harvest_group_lease_renew_seconds_count{group="g"} 2.0' in text
