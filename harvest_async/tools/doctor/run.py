"""Running the checks in order, and what a Redis error during one of them means."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence

import anyio

from harvest_async.clock import Clock, SystemClock
from harvest_async.config import Settings
from harvest_async.errors import PermissionDenied, RedisUnavailable
from harvest_async.redis_io.client import (
    REDIS_ERRORS,
    Client,
    ResponseError,
    client_for,
    describe_url,
    endpoint_for,
    redis_errors,
)
from harvest_async.redis_io.cluster.setup import cluster_client
from harvest_async.redis_io.cluster.topology import is_cluster
from harvest_async.tools.doctor.connection import check_notifications, check_redis
from harvest_async.tools.doctor.group import GROUP_CHECK, check_group
from harvest_async.tools.doctor.inputs import check_inputs
from harvest_async.tools.doctor.outputs import check_proposals, check_publisher, check_stream
from harvest_async.tools.doctor.report import CHECK_NAMES, Check, Context, Report

__all__ = ["run_doctor"]

Step = Callable[[Client, Settings, float, Context, "str | None"], Awaitable[Check]]
_STEPS: tuple[tuple[str, Step], ...] = (
    ("notifications", check_notifications),
    ("inputs", check_inputs),
    ("publisher", check_publisher),
    ("proposals", check_proposals),
    ("stream", check_stream),
)


async def run_doctor(
    settings: Settings,
    *,
    only: Sequence[str] | None = None,
    instance: str | None = None,
    clock: Clock | None = None,
    socket_timeout: float = 3.0,
) -> Report:
    """Run the checks (all, or `only` these; `redis` always). `instance`: the publisher
    instance that must be alive (None: any instance will do)."""
    clock = clock or SystemClock()
    wanted = set(only) if only else set(CHECK_NAMES)
    report = Report(redis=describe_url(settings.redis_url), checks=[])
    # RESP2, as the service's connections: its AUTH refuses what the service's refuses
    client = (
        cluster_client(settings)  # a Redis Cluster: every key read on its own node
        if await _on_cluster(settings, socket_timeout)
        else client_for(
            settings.redis_url,
            settings.redis_password,
            socket_timeout=socket_timeout,
            name="harvest-async-doctor",
            protocol=2,
        )
    )
    try:
        redis_check = await check_redis(client, settings)
        report.checks.append(redis_check)
        if redis_check.status == "FAIL":
            report.unreachable = True
            return report
        ctx = Context()
        steps = list(_STEPS)
        if settings.group is not None:
            # a publisher group's members and partition owners (INTERFACE §6)
            steps.insert(3, (GROUP_CHECK, check_group))
            if not only:
                wanted.add(GROUP_CHECK)
        for name, step in steps:
            if name not in wanted:
                continue
            try:
                async with redis_errors("Redis error during the check", replies=False):
                    check = await step(client, settings, clock.now(), ctx, instance)
            except PermissionDenied as exc:
                check = Check(name=name, status="FAIL", message=str(exc))
            except RedisUnavailable as exc:
                report.checks.append(_unreachable(name, exc))
                report.unreachable = True
                return report
            except ResponseError as exc:
                check = _refused(name, exc)
            report.checks.append(check)
        return report
    finally:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(*REDIS_ERRORS):
                await client.aclose()


async def _on_cluster(settings: Settings, limit: float) -> bool:
    if settings.redis_cluster == "false" or not settings.redis_url.startswith(
        ("redis://", "rediss://")
    ):
        return False
    try:
        return await is_cluster(endpoint_for(settings), limit=limit)
    except RedisUnavailable:
        return False  # the `redis` check reports it


def _unreachable(name: str, exc: RedisUnavailable) -> Check:
    return Check(
        name=name,
        status="FAIL",
        message=str(exc),
        action="check the server's log and the network; run doctor again",
    )


def _refused(name: str, exc: ResponseError) -> Check:
    return Check(
        name=name,
        status="FAIL",
        message=f"the server refused a command: {exc}",
        action="grant the service's Redis user read access to the keys it uses "
        "(ACL), or check that the key has the expected type",
    )
