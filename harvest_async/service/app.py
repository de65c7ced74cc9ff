"""Composition of the live service: clients, engine, runner, source, liveness, signals.

`serve` is what `harvest-async run` calls; the CLI maps its exceptions to exit codes.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
from anyio.abc import TaskStatus

from harvest_async import __version__
from harvest_async.backoff import DenialLog
from harvest_async.clock import Clock, SystemClock
from harvest_async.config import Settings, engine_config
from harvest_async.core.engine import Engine
from harvest_async.core.ports import Observer, RunnerHooks
from harvest_async.errors import PermissionDenied, RedisUnavailable
from harvest_async.redis_io.client import (
    check_redis,
    client_for,
    describe_url,
    endpoint_for,
)
from harvest_async.redis_io.inputs_io import InputLimits
from harvest_async.redis_io.liveness import LivenessWriter
from harvest_async.redis_io.notifications import KeyspaceSource
from harvest_async.redis_io.permissions import verify_permissions
from harvest_async.redis_io.reader import RedisInputReader
from harvest_async.redis_io.sink import RedisSink
from harvest_async.service.fanout import fan_out
from harvest_async.service.metrics_server import start_for as start_metrics
from harvest_async.service.publish_log import PublishLog
from harvest_async.service.runner import Runner
from harvest_async.service.sdnotify import Notifier

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
    await check_redis(settings)
    await verify_permissions(settings, "once" if once else "run")
    publish_log = PublishLog(settings.log_publish_detail_max_per_sec)
    observer = fan_out(publish_log, observer)
    stop_metrics: Callable[[], None] | None = None
    if settings.metrics_port is not None and not once:
        observer, hooks, stop_metrics = start_metrics(settings, observer, hooks)
    timeout = settings.redis_timeout_sec
    # the cold paths (discovery, proposals read back, liveness) on redis-py; the hot paths
    # (input reads, proposal writes, notifications) on connections of their own (wire)
    client = client_for(
        settings.redis_url, settings.redis_password, retries=0, socket_timeout=timeout
    )
    endpoint = endpoint_for(settings)
    engine = build_engine(settings, observer)
    reader = RedisInputReader(
        client, settings.keys, endpoint, timeout=timeout, limits=InputLimits.of(settings)
    )
    sink = RedisSink(
        endpoint,
        settings.keys,
        enable_stream=settings.enable_stream,
        stream_maxlen=settings.stream_maxlen,
        proposal_ttl=settings.proposal_ttl_sec,
        timeout=timeout,
    )
    runner = Runner(
        engine,
        reader,
        sink,
        clock,
        symbols=settings.symbols,
        reconcile_every=settings.max_publish_age_sec,
        shutdown_grace=settings.shutdown_grace_sec,
        hooks=hooks,
        gather=GATHER_HELD_SEC,
    )
    notifier = Notifier()
    try:
        if once:
            await runner.startup()
            log.info(
                "one pass done: %d symbols, %d writes, %d proposals adopted",
                len(engine),
                runner.writes,
                engine.adopted,
            )
            return 0
        source = KeyspaceSource(
            settings.redis_url,
            settings.redis_password,
            settings.keys,
            instance=settings.instance,
            input_streams=settings.input_streams,
            poll_interval=settings.poll_interval_sec,
            canary_timeout=settings.canary_timeout_sec,
        )
        liveness = LivenessWriter(
            client, settings.keys, settings.instance, settings.liveness_ttl_sec
        )
        _log_startup(settings, engine.theta_id)
        async with anyio.create_task_group() as tg:
            if handle_signals:
                tg.start_soon(_stop_on_signal, tg.cancel_scope, notifier)
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
                )
            )
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


async def _stop_on_signal(scope: anyio.CancelScope, notifier: Notifier) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s received: finishing the in-flight write and stopping", signum.name)
            notifier.stopping()
            scope.cancel()
            return


async def _liveness_loop(
    *,
    liveness: LivenessWriter,
    source: KeyspaceSource,
    runner: Runner,
    clock: Clock,
    settings: Settings,
    notifier: Notifier,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    interval = min(settings.liveness_ttl_sec / 3, 5.0)
    if notifier.watchdog_sec is not None:
        interval = min(interval, notifier.watchdog_sec / 3)
    denials = DenialLog(log)
    while True:
        # the watchdog ping comes from this loop: a stuck event loop stops it
        notifier.watchdog()
        try:
            # arm the canary before writing: the notification can be consumed before
            # beat() returns, and arming afterwards would then wait for one never coming
            source.expect_canary()
            await _beat(liveness, runner, clock, settings.shutdown_grace_sec)
            notifier.status(
                f"{len(runner.engine)} symbols, {runner.writes} writes, mode={source.mode}"
            )
            denials.allowed()
        except PermissionDenied as exc:
            source.cancel_canary()  # nothing was written, so nothing will be notified
            denials.denied(exc)
            notifier.status(str(exc))
        except RedisUnavailable as exc:
            log.warning("liveness write failed: %s", exc)
            notifier.status(f"redis unavailable: {exc}")
        task_status.started()
        task_status = anyio.TASK_STATUS_IGNORED
        await anyio.sleep(interval)


async def _beat(liveness: LivenessWriter, runner: Runner, clock: Clock, grace: float) -> None:
    """One refresh, finished (within `grace`) even when the service is stopping: cut off
    on the wire, it could reach Redis after the shutdown's DEL and revive the key."""
    with anyio.CancelScope(shield=True):
        with anyio.move_on_after(grace) as limit:
            await liveness.beat(clock.now(), len(runner.engine))
    if limit.cancelled_caught:
        raise RedisUnavailable(f"liveness write did not finish within {grace:g} s")
