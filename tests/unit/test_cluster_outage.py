"""A Redis Cluster's outage, node by node (`ClusterOutage`): a lost node is one WARNING
naming it whoever sees it (its listener, the reads, the writes), its end one INFO with the
duration once every slot is served again (the node back, or replaced by the map)."""

from __future__ import annotations

import logging
from typing import cast

import anyio
import pytest

from harvest_async.redis_io.cluster.cluster_outage import ClusterOutage
from harvest_async.redis_io.cluster.topology import Address, SlotMap

A, B, C, R = ("h", 1), ("h", 2), ("h", 3), ("h", 4)


class Map:
    """What the outage asks of a `SlotMap`: the primaries, and `suspect`."""

    def __init__(self, *primaries: Address) -> None:
        self.primaries = tuple(primaries)
        self.suspected = 0

    def suspect(self, seconds: float = 20.0) -> None:
        self.suspected += 1


def outage(slots: Map, t: list[float]) -> ClusterOutage:
    return ClusterOutage(
        "redis://h:1/0",
        logging.getLogger("t"),
        cast(SlotMap, slots),
        remind_every=60.0,
        now=lambda: t[0],
    )


def loud(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]


async def test_a_failover_is_one_warning_naming_the_node_and_one_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    t = [0.0]
    slots = Map(A, B, C)
    out = outage(slots, t)
    listener = out.node(B)
    listener.failed("notifications", "connection refused")
    out.failed("processing", "reading inputs: refused", node=B)
    out.failed("writes", "proposal hash: refused", node=B)
    out.failed("liveness", "refused")  # no node named while one is lost: its doing
    assert listener.active and out.lost.keys() == {B} and slots.suspected == 1
    woken = []

    async def waiter() -> None:
        woken.append(await out.pause(30.0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(0.01)
        t[0] = 3.2
        slots.primaries = (A, C, R)
        out.primaries_changed(slots.primaries, {B: "h:4"})
    assert woken == [True]
    # a route to the former primary failing afterwards: not a new loss
    out.failed("processing", "refused", node=B)
    assert loud(caplog) == [
        (
            "WARNING",
            "Redis Cluster node h:2 lost (notifications: connection refused); its slots "
            "wait for it or for its replica's promotion, the other nodes' are served",
        ),
        ("INFO", "Redis Cluster: every slot served again after 3.2 s (h:2 replaced by h:4)"),
    ]
    assert not out.lost and out.node_outages == 1 and not out.active


async def test_a_node_back_ends_it_once_every_lost_node_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    t = [0.0]
    out = outage(Map(A, B, C), t)
    out.node(A).failed("notifications", "refused")
    t[0] = 1.0
    out.node(C).failed("notifications", "refused")
    t[0] = 61.0
    out.node(A).failed("notifications", "refused")  # a reminder, a minute after the first
    out.node(A).recovered("notifications")
    t[0] = 62.5
    out.node(C).recovered("notifications")
    out.node(C).recovered("notifications")
    assert [level for level, _ in loud(caplog)] == ["WARNING", "WARNING", "WARNING", "INFO"]
    assert "node h:1 still lost after 61 s" in loud(caplog)[2][1]
    assert loud(caplog)[3][1] == (
        "Redis Cluster: every slot served again after 62.5 s (h:1 answers again; h:3 answers again)"
    )


def test_every_node_unreachable_without_a_name_is_the_one_server_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    t = [0.0]
    out = outage(Map(A, B, C), t)
    out.failed("processing", "discovering: refused")
    t[0] = 4.0
    out.recovered("processing")
    assert loud(caplog) == [
        (
            "WARNING",
            "Redis at redis://h:1/0 unavailable (processing: discovering: refused); retrying "
            "with backoff, reminders every 60 s",
        ),
        ("INFO", "Redis at redis://h:1/0 available again after 4.0 s of outage"),
    ]
