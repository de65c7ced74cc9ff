"""Composition of the live service: clients, engine, runner, source, liveness, signals.

`serve` is what `harvest-async run` calls; the CLI maps its exceptions to exit codes. It
reads top-down: connect (Redis, cluster or not, ACL), build (the deployment's I/O, the
engine, the runner), run (one task group) and shut down, whichever step failed.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio

from harvest_async import __version__
from harvest_async.backoff import RedisOutage
from harvest_async.clock import Clock, SystemClock
from harvest_async.config import Settings, engine_config
from harvest_async.core.engine import Engine
from harvest_async.core.ports import Observer, RunnerHooks
from harvest_async.errors import ConfigError, RedisUnavailable
from harvest_async.redis_io.client import check_redis, describe_url
from harvest_async.redis_io.cluster.cluster_reader import ClusterInputReader
from harvest_async.redis_io.cluster.cluster_sink import ClusterSink
from harvest_async.redis_io.cluster.setup import cluster_slots
from harvest_async.redis_io.leases import Leases
from harvest_async.redis_io.liveness import LivenessWriter, read_publishers
from harvest_async.redis_io.permissions import (
    Role,
    replica_gaps,
    replica_warning,
    verify_permissions,
)
from harvest_async.redis_io.reader import RedisInputReader
from harvest_async.redis_io.sink import RedisSink
from harvest_async.service.deployments import Deployment, deployment_for
from harvest_async.service.fanout import fan_out
from harvest_async.service.group import Beats, GroupMember
from harvest_async.service.group_metrics import GroupCollector
from harvest_async.service.heartbeat import Heartbeat
from harvest_async.service.metrics_server import start_for as start_metrics
from harvest_async.service.publish_log import PublishLog
from harvest_async.service.runner import Runner
from harvest_async.service.sdnotify import Notifier
from harvest_async.service.startup import wait_for_redis
from harvest_async.signals import cancel_on_signal

__all__ = ["build_engine", "serve"]

log = logging.getLogger(__name__)

# how long changes of floor-held symbols (they can at most be deferred) are gathered into
# one round: at high rates a round then reads many, not one or two (Runner's `gather`)
GATHER_HELD_SEC = 0.005


def build_engine(settings: Settings, observer: Observer | None = None) -> Engine:
    return Engine(engine_config(settings), observer)


async def serve(
    settings: Settings,
    *,
    once: bool = False,
    clock: Clock | None = None,
    observer: Observer | None = None,
    hooks: RunnerHooks | None = None,
    on_ready: Callable[[Runner], Awaitable[None]] | None = None,
    handle_signals: bool = True,
) -> int:
    clock = clock or SystemClock()
    if settings.group is not None and once:
        raise ConfigError("GROUP", "run --once computes every symbol: it cannot share a group")
    notifier = Notifier()
    deployment = await _connect(settings, notifier, once=once)
    try:
        svc = _build(settings, deployment, clock, observer, hooks, once=once)
    except BaseException:  # e.g. a TLS file the client cannot load
        notifier.close()
        raise
    try:
        if svc.member is not None:
            await _check_partitions(svc.client, settings, clock)
        if once:
            await _one_pass(svc)
        else:
            await _run(svc, notifier, on_ready, handle_signals=handle_signals)
        return 0
    finally:
        await _shutdown(svc, notifier, once=once)


async def _connect(settings: Settings, notifier: Notifier, *, once: bool) -> Deployment:
    """Redis answering (`run` waits for it), one server or a cluster, the ACL checked.
    Nothing else exists yet: a failure here has only the notifier to close."""
    try:
        if once:
            await check_redis(settings)  # one pass: Redis now or exit 3
        else:
            await wait_for_redis(settings, notifier)  # REDIS_STARTUP_TIMEOUT_SEC
        # Redis Cluster (INTERFACE §7): the slot map, or None on one server / Sentinel
        slots = await cluster_slots(settings)
        # on a cluster every primary has an ACL of its own: each is checked
        nodes = None if slots is None else [slots.endpoint(a) for a in slots.primaries]
        role: Role = "once" if once else "run"
        await verify_permissions(settings, role, nodes=nodes)
        if slots is not None and slots.replicas:
            # a replica serves nothing until promoted: what its ACL lacks is a warning
            replicas = [slots.endpoint(a) for a in slots.replicas]
            gaps = await replica_gaps(settings, role, replicas)
            if gaps:
                log.warning("startup ACL check: %s", replica_warning(gaps))
    except BaseException:
        notifier.close()
        raise
    return deployment_for(settings, slots)


@dataclass(frozen=True)
class _Service:
    """What `_build` made: what the run uses and the shutdown closes."""

    settings: Settings
    deployment: Deployment
    clock: Clock
    publish_log: PublishLog
    stop_metrics: Callable[[], None] | None
    client: Any
    member: GroupMember | None
    engine: Engine
    outage: RedisOutage
    reader: RedisInputReader | ClusterInputReader
    sink: RedisSink | ClusterSink
    runner: Runner


def _build(
    settings: Settings,
    deployment: Deployment,
    clock: Clock,
    observer: Observer | None,
    hooks: RunnerHooks | None,
    *,
    once: bool,
) -> _Service:
    """Everything `serve` runs and closes, on the deployment `_connect` found."""
    publish_log = PublishLog(settings.log_publish_detail_max_per_sec)
    observer = fan_out(publish_log, observer)
    stop_metrics: Callable[[], None] | None = None
    # a publisher group's metrics, bound to the member once it exists
    group_metrics = GroupCollector() if settings.group is not None else None
    if settings.metrics_port is not None and not once:
        collectors = [group_metrics] if group_metrics is not None else []
        observer, hooks, stop_metrics = start_metrics(settings, observer, hooks, collectors)
    try:
        return _assemble(
            settings, deployment, clock, observer, hooks, publish_log, stop_metrics, group_metrics
        )
    except BaseException:  # the metrics server is the only thing running yet
        if stop_metrics is not None:
            stop_metrics()
        raise


def _assemble(  # noqa: PLR0917 - the parts _build made, passed on once
    settings: Settings,
    deployment: Deployment,
    clock: Clock,
    observer: Observer | None,
    hooks: RunnerHooks | None,
    publish_log: PublishLog,
    stop_metrics: Callable[[], None] | None,
    group_metrics: GroupCollector | None,
) -> _Service:
    client = deployment.client()
    member = _group_member(settings, client, clock, deployment.leases)
    if group_metrics is not None:
        group_metrics.member = member
    engine = build_engine(settings, observer)
    # one outage for every reconnect loop: a WARNING when it starts, reminders, one INFO
    # (on a cluster, node by node: one WARNING per lost node)
    outage = deployment.outage(log)
    reader, sink = deployment.reader_and_sink(client, member)
    runner = _runner(
        settings, engine, reader, sink, clock, hooks=hooks, outage=outage, member=member
    )
    if member is not None:
        member.bind(runner)
    return _Service(
        settings=settings,
        deployment=deployment,
        clock=clock,
        publish_log=publish_log,
        stop_metrics=stop_metrics,
        client=client,
        member=member,
        engine=engine,
        outage=outage,
        reader=reader,
        sink=sink,
        runner=runner,
    )


def _runner(
    settings: Settings,
    engine: Engine,
    reader: RedisInputReader | ClusterInputReader,
    sink: RedisSink | ClusterSink,
    clock: Clock,
    *,
    hooks: RunnerHooks | None,
    outage: RedisOutage,
    member: GroupMember | None,
) -> Runner:
    return Runner(
        engine,
        reader,
        sink,
        clock,
        symbols=settings.symbols,
        reconcile_every=settings.max_publish_age_sec,
        shutdown_grace=settings.shutdown_grace_sec,
        hooks=hooks,
        outage=outage,
        on_fenced=member.fenced if member is not None else None,
        gather=GATHER_HELD_SEC,
        keys=settings.keys,
    )


async def _one_pass(svc: _Service) -> None:
    """`run --once`: every symbol computed and written once, then the shutdown."""
    await svc.runner.startup()
    log.info(
        "one pass done: %d symbols, %d writes, %d proposals adopted",
        len(svc.engine),
        svc.runner.writes,
        svc.engine.adopted,
    )


async def _run(
    svc: _Service,
    notifier: Notifier,
    on_ready: Callable[[Runner], Awaitable[None]] | None,
    *,
    handle_signals: bool,
) -> None:
    """`run`: one task group for every task, ready once each has started; a signal (or
    the caller) cancels it."""
    settings, runner, engine = svc.settings, svc.runner, svc.engine
    source = svc.deployment.source(svc.outage)
    liveness = LivenessWriter(
        svc.client,
        settings.keys,
        settings.instance,
        settings.liveness_ttl_sec,
        group=settings.group,
        partitions=settings.partitions,
    )
    heartbeat = Heartbeat(liveness, source, runner, svc.clock, settings, notifier, svc.outage, log)
    _log_startup(settings, engine.theta_id)
    async with anyio.create_task_group() as tg:
        if handle_signals:
            tg.start_soon(cancel_on_signal, tg.cancel_scope, partial(_on_signal, notifier))
        tg.start_soon(svc.publish_log.run, svc.clock)
        await tg.start(runner.run, source)
        # started after its first refresh: ready means announced
        await tg.start(heartbeat.run)
        if svc.member is not None:
            await tg.start(svc.member.run)
        notifier.ready(f"publishing {len(engine)} symbols")
        log.info(
            "ready: %d symbols, %d writes at startup, %d proposals adopted",
            len(engine),
            runner.writes,
            engine.adopted,
        )
        if on_ready is not None:
            await on_ready(runner)


async def _shutdown(svc: _Service, notifier: Notifier, *, once: bool) -> None:
    """Whatever stopped the service (a signal, an error at any step after `_build`): the
    group and liveness released while Redis may still answer, then every close."""
    settings, runner = svc.settings, svc.runner
    cleared = False
    with anyio.CancelScope(shield=True):
        if svc.member is not None:
            # after the last write: the next owners take over at once
            with contextlib.suppress(RedisUnavailable), anyio.move_on_after(2.0):
                await svc.member.release()
        if not once:
            with contextlib.suppress(RedisUnavailable):
                await LivenessWriter(
                    svc.client, settings.keys, settings.instance, settings.liveness_ttl_sec
                ).clear()
                cleared = True
        await svc.client.aclose()
    svc.reader.close()
    svc.sink.close()
    notifier.close()
    if svc.stop_metrics is not None:
        svc.stop_metrics()
    svc.publish_log.roll(svc.clock.now(), final=True)
    if not once:
        log.info(
            "stopped after %d writes (%d symbols tracked); liveness key %s",
            runner.writes,
            len(svc.engine),
            "deleted" if cleared else "NOT deleted (Redis unavailable): it expires by its TTL",
            extra={"event": "shutdown", "writes": runner.writes},
        )


def _group_member(
    settings: Settings, client: Any, clock: Clock, kind: type[Leases]
) -> GroupMember | None:
    """A publisher group's member (INTERFACE §6), or None without GROUP. `kind`: the
    deployment's leases."""
    group = settings.group
    if group is None:
        return None

    async def beats() -> Beats:
        found = await read_publishers(client, settings.keys)
        return {p.instance: (p.group, p.last_beat_epoch) for p in found}

    leases = kind(client, settings.keys, group, settings.instance, settings.lease_ttl_sec)
    return GroupMember(
        leases, clock, beats, partitions=settings.partitions, ttl=settings.lease_ttl_sec
    )


async def _check_partitions(client: Any, settings: Settings, clock: Clock) -> None:
    """Every member of a group must hash symbols into the same number of partitions, or
    two of them would own one symbol under two leases: a live member with another
    PARTITIONS stops this one's start (exit 2)."""
    now = clock.now()
    for p in await read_publishers(client, settings.keys):
        beat = p.beat_age(now)
        if p.group != settings.group or p.instance == settings.instance or beat is None:
            continue
        if beat <= settings.lease_ttl_sec and p.partitions != str(settings.partitions):
            raise ConfigError(
                "PARTITIONS",
                f"{settings.partitions}, but member {p.instance} of group {settings.group} "
                f"runs with {p.partitions or '?'}: every member needs the same value",
            )


def _log_startup(settings: Settings, theta_id: str) -> None:
    symbols = (
        f"{len(settings.symbols)} listed ({','.join(settings.symbols[:5])}"
        + (",..." if len(settings.symbols) > 5 else "")
        + ")"
        if settings.symbols
        else "* (every position key, discovered live)"
    )
    log.info(
        "harvest-async %s running: instance=%s theta_id=%s symbols=%s redis=%s floor=%gs "
        "heartbeat=%gs stream=%s",
        __version__,
        settings.instance,
        theta_id,
        symbols,
        describe_url(settings.redis_url),
        settings.publish_interval_sec,
        settings.max_publish_age_sec,
        settings.keys.stream if settings.enable_stream else "off",
        extra={"event": "startup", "version": __version__, "theta_id": theta_id},
    )


def _on_signal(notifier: Notifier, signum: signal.Signals) -> None:
    log.info("%s received: finishing the in-flight write and stopping", signum.name)
    notifier.stopping()
