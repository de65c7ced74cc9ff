"""Composition of the live service: clients, engine, runner, source, liveness, signals.

`serve` is what `harvest-async run` calls; the CLI maps its exceptions to exit codes.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio
from anyio.abc import TaskStatus

from harvest_async import __version__
from harvest_async.backoff import Backoff, DenialLog, RedisOutage
from harvest_async.clock import Clock, SystemClock, monotonic
from harvest_async.config import Settings, engine_config
from harvest_async.core.engine import Engine
from harvest_async.core.ports import Gap, InputReader, Observer, RunnerHooks
from harvest_async.errors import ConfigError, PermissionDenied, RedisUnavailable
from harvest_async.redis_io.client import (
    check_redis,
    client_for,
    describe_url,
    endpoint_for,
)
from harvest_async.redis_io.cluster.cluster_leases import ClusterLeases
from harvest_async.redis_io.cluster.cluster_notifications import ClusterSource
from harvest_async.redis_io.cluster.cluster_outage import ClusterOutage
from harvest_async.redis_io.cluster.cluster_reader import ClusterInputReader
from harvest_async.redis_io.cluster.cluster_sink import ClusterSink
from harvest_async.redis_io.cluster.setup import cluster_client, cluster_slots
from harvest_async.redis_io.cluster.topology import SlotMap
from harvest_async.redis_io.inputs_io import InputLimits
from harvest_async.redis_io.leases import Leases
from harvest_async.redis_io.liveness import LivenessWriter, read_publishers
from harvest_async.redis_io.notifications import KeyspaceSource
from harvest_async.redis_io.permissions import verify_permissions
from harvest_async.redis_io.reader import RedisInputReader
from harvest_async.redis_io.sink import RedisSink
from harvest_async.redis_io.wire import Endpoint
from harvest_async.service.fanout import fan_out
from harvest_async.service.group import Beats, GroupMember
from harvest_async.service.group_metrics import GroupCollector
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
    try:
        if once:
            await check_redis(settings)  # one pass: Redis now or exit 3
        else:
            await wait_for_redis(settings, notifier)  # REDIS_STARTUP_TIMEOUT_SEC
        # Redis Cluster (INTERFACE §7): the slot map, or None on one server / Sentinel
        slots = await cluster_slots(settings)
        # on a cluster every primary has an ACL of its own: each is checked
        nodes = None if slots is None else [slots.endpoint(a) for a in slots.primaries]
        await verify_permissions(settings, "once" if once else "run", nodes=nodes)
    except BaseException:
        notifier.close()
        raise
    publish_log = PublishLog(settings.log_publish_detail_max_per_sec)
    observer = fan_out(publish_log, observer)
    stop_metrics: Callable[[], None] | None = None
    # a publisher group's metrics, bound to the member once it exists
    group_metrics = GroupCollector() if settings.group is not None else None
    if settings.metrics_port is not None and not once:
        collectors = [group_metrics] if group_metrics is not None else []
        observer, hooks, stop_metrics = start_metrics(settings, observer, hooks, collectors)
    timeout = settings.redis_timeout_sec
    # the cold paths (discovery, proposals read back, liveness) on redis-py; the hot paths
    # (input reads, proposal writes, notifications) on connections of their own (wire)
    client = (
        client_for(settings.redis_url, settings.redis_password, retries=0, socket_timeout=timeout)
        if slots is None
        else cluster_client(settings)
    )
    endpoint = endpoint_for(settings)
    member = _group_member(settings, client, clock, cluster=slots is not None)
    if group_metrics is not None:
        group_metrics.member = member
    engine = build_engine(settings, observer)
    # one outage for every reconnect loop: a WARNING when it starts, reminders, one INFO
    # (on a cluster, node by node: one WARNING per lost node)
    where, remind = describe_url(settings.redis_url), settings.outage_reminder_sec
    outage = (
        RedisOutage(where, log, remind_every=remind)
        if slots is None
        else ClusterOutage(where, log, slots, remind_every=remind)
    )
    reader: InputReader
    sink: RedisSink | ClusterSink
    if slots is not None:  # -- the cluster's hooks (redis_io/cluster) --
        reader, sink = _cluster_io(settings, client, slots, member)
    else:
        reader = RedisInputReader(
            client, settings.keys, endpoint, timeout=timeout, limits=InputLimits.of(settings)
        )
        sink = _sink(settings, endpoint, member)
    runner = Runner(
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
    if member is not None:
        member.bind(runner)
    try:
        if member is not None:
            await _check_partitions(client, settings, clock)
        if once:
            await runner.startup()
            log.info(
                "one pass done: %d symbols, %d writes, %d proposals adopted",
                len(engine),
                runner.writes,
                engine.adopted,
            )
            return 0
        source: KeyspaceSource | ClusterSource
        if slots is not None:
            source = ClusterSource(
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
        else:
            source = KeyspaceSource(
                settings.redis_url,
                settings.redis_password,
                settings.keys,
                instance=settings.instance,
                input_streams=settings.input_streams,
                poll_interval=settings.poll_interval_sec,
                canary_timeout=settings.canary_timeout_sec,
                outage=outage,
            )
        liveness = LivenessWriter(
            client,
            settings.keys,
            settings.instance,
            settings.liveness_ttl_sec,
            group=settings.group,
            partitions=settings.partitions,
        )
        _log_startup(settings, engine.theta_id)
        async with anyio.create_task_group() as tg:
            if handle_signals:
                tg.start_soon(cancel_on_signal, tg.cancel_scope, partial(_on_signal, notifier))
            tg.start_soon(publish_log.run, clock)
            await tg.start(runner.run, source)
            # started after its first refresh: ready means announced
            await tg.start(
                partial(
                    _liveness_loop,
                    liveness=liveness,
                    source=source,
                    runner=runner,
                    clock=clock,
                    settings=settings,
                    notifier=notifier,
                    outage=outage,
                )
            )
            if member is not None:
                await tg.start(member.run)
            notifier.ready(f"publishing {len(engine)} symbols")
            log.info(
                "ready: %d symbols, %d writes at startup, %d proposals adopted",
                len(engine),
                runner.writes,
                engine.adopted,
            )
            if on_ready is not None:
                await on_ready(runner)
        return 0
    finally:
        cleared = False
        with anyio.CancelScope(shield=True):
            if member is not None:
                # after the last write: the next owners take over at once
                with contextlib.suppress(RedisUnavailable), anyio.move_on_after(2.0):
                    await member.release()
            if not once:
                with contextlib.suppress(RedisUnavailable):
                    await LivenessWriter(
                        client, settings.keys, settings.instance, settings.liveness_ttl_sec
                    ).clear()
                    cleared = True
            await client.aclose()
        reader.close()
        sink.close()
        notifier.close()
        if stop_metrics is not None:
            stop_metrics()
        publish_log.roll(clock.now(), final=True)
        if not once:
            log.info(
                "stopped after %d writes (%d symbols tracked); liveness key %s",
                runner.writes,
                len(engine),
                "deleted" if cleared else "NOT deleted (Redis unavailable): it expires by its TTL",
                extra={"event": "shutdown", "writes": runner.writes},
            )


def _sink(settings: Settings, endpoint: Endpoint, member: GroupMember | None) -> RedisSink:
    return RedisSink(
        endpoint,
        settings.keys,
        enable_stream=settings.enable_stream,
        stream_maxlen=settings.stream_maxlen,
        proposal_ttl=settings.proposal_ttl_sec,
        timeout=settings.redis_timeout_sec,
        fence=member.fence if member is not None else None,
    )


def _cluster_io(
    settings: Settings, client: Any, slots: SlotMap, member: GroupMember | None
) -> tuple[ClusterInputReader, ClusterSink]:
    """The reader and sink of cluster mode (redis_io/cluster): per-slot routing."""
    timeout = settings.redis_timeout_sec
    reader = ClusterInputReader(
        client, settings.keys, slots, timeout=timeout, limits=InputLimits.of(settings)
    )
    sink = ClusterSink(
        slots,
        settings.keys,
        enable_stream=settings.enable_stream,
        stream_maxlen=settings.stream_maxlen,
        proposal_ttl=settings.proposal_ttl_sec,
        timeout=timeout,
        fence=member.fence if member is not None else None,
    )
    return reader, sink


def _group_member(
    settings: Settings, client: Any, clock: Clock, *, cluster: bool = False
) -> GroupMember | None:
    """A publisher group's member (INTERFACE §6), or None without GROUP."""
    group = settings.group
    if group is None:
        return None

    async def beats() -> Beats:
        found = await read_publishers(client, settings.keys)
        return {p.instance: (p.group, p.last_beat_epoch) for p in found}

    kind = ClusterLeases if cluster else Leases  # a cluster: no scripts in pipelines
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


async def _liveness_loop(
    *,
    liveness: LivenessWriter,
    source: KeyspaceSource | ClusterSource,
    runner: Runner,
    clock: Clock,
    settings: Settings,
    notifier: Notifier,
    outage: RedisOutage,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    interval = min(settings.liveness_ttl_sec / 3, 5.0)
    if settings.group is not None:
        interval = min(interval, settings.lease_ttl_sec / 4)  # the group's membership
    if notifier.watchdog_sec is not None:
        interval = min(interval, notifier.watchdog_sec / 3)
    denials = DenialLog(log)
    # while Redis is down the beats back off (the watchdog pings keep their pace)
    backoff = Backoff(first=interval, cap=max(interval, 10.0))
    next_beat = 0.0
    while True:
        # the watchdog ping comes from this loop: a stuck event loop stops it
        notifier.watchdog()
        if monotonic() >= next_beat:
            try:
                # arm the canary before writing: the notification can be consumed before
                # beat() returns, and arming afterwards would then wait for one never coming
                source.expect_canary()
                gone = await _beat(liveness, runner, clock, settings.shutdown_grace_sec)
                if gone and not backoff.attempts:
                    # our own key vanished: so may have the proposals, with no notification
                    # or reconnect to say so (FLUSHALL): check them all. (After an outage
                    # of our own, the reconnect's resync checks them already.)
                    runner.emit(Gap("liveness key lost"))
                notifier.status(
                    f"{len(runner.engine)} symbols, {runner.writes} writes, mode={source.mode}"
                )
                denials.allowed()
                if backoff.attempts:
                    backoff.reset()
                    outage.recovered("liveness")
            except PermissionDenied as exc:
                source.cancel_canary()  # nothing was written, so nothing will be notified
                denials.denied(exc)
                notifier.status(str(exc))
            except RedisUnavailable as exc:
                source.cancel_canary()  # the write failed: its notification is not missing
                outage.failed("liveness", str(exc))
                notifier.status(f"Redis unavailable at {outage.where}; retrying")
                next_beat = monotonic() + backoff.next_delay()
        task_status.started()
        task_status = anyio.TASK_STATUS_IGNORED
        if not backoff.attempts:
            await anyio.sleep(interval)
        elif await outage.pause(interval):
            next_beat = 0.0  # another loop found Redis back: announce ourselves at once


async def _beat(liveness: LivenessWriter, runner: Runner, clock: Clock, grace: float) -> bool:
    """One refresh, finished (within `grace`) even when the service is stopping: cut off
    on the wire, it could reach Redis after the shutdown's DEL and revive the key. True:
    the key was gone (see `LivenessWriter.beat`)."""
    gone = False
    with anyio.CancelScope(shield=True):
        with anyio.move_on_after(grace) as limit:
            gone = await liveness.beat(clock.now(), len(runner.engine))
    if limit.cancelled_caught:
        raise RedisUnavailable(f"liveness write did not finish within {grace:g} s")
    return gone
