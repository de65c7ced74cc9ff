"""A publisher group's metrics (INTERFACE §6), read from the member at each scrape:
partitions owned, members seen, takeovers, partitions lost, fenced writes, and the lease
renewal round trip. Registered on the service's registry only with GROUP set."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from harvest_async.service.group import RENEW_BUCKETS, GroupMember

__all__ = ["GROUP_METRIC_NAMES", "GroupCollector"]

GROUP_METRIC_NAMES = (
    "harvest_group_partitions_owned",
    "harvest_group_members",
    "harvest_group_takeovers_total",
    "harvest_group_partitions_lost_total",
    "harvest_group_fenced_writes_total",
    "harvest_group_lease_renew_seconds",
)


class GroupCollector(Collector):
    def __init__(self, member: GroupMember | None = None) -> None:
        self.member = member  # None: nothing to report yet

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        m = self.member
        if m is None:
            return
        stats = m.stats
        labels = ["group"]
        value = [m.group]

        def gauge(name: str, text: str, v: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, text, labels=labels)
            g.add_metric(value, v)
            return g

        def counter(name: str, text: str, v: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, text, labels=labels)
            c.add_metric(value, v)
            return c

        yield gauge("harvest_group_partitions_owned", "Partitions this member owns.", len(m.held))
        yield gauge("harvest_group_members", "Live members this member sees.", stats.members)
        yield counter("harvest_group_takeovers", "Partitions gained.", stats.takeovers)
        yield counter(
            "harvest_group_partitions_lost",
            "Partitions given up (rebalanced, fenced, not renewed in time, stopping).",
            stats.losses,
        )
        yield counter(
            "harvest_group_fenced_writes",
            "Outputs the write script refused: the partition's lease was another's.",
            stats.fenced_writes,
        )
        h = HistogramMetricFamily(
            "harvest_group_lease_renew_seconds",
            "Round trip of one renewal of every lease held.",
            labels=labels,
        )
        cumulative = 0
        buckets = []
        for bound, n in zip((*RENEW_BUCKETS, float("inf")), stats.renew_counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        h.add_metric(value, buckets, stats.renew_sum)
        yield h
