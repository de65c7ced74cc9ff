"""The running service's heartbeat: the liveness key refreshed (INTERFACE §5) and systemd's
watchdog pinged, from one loop in the service's task group (service/app.py starts it)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

from harvest_async.backoff import Backoff, DenialLog, RedisOutage
from harvest_async.clock import Clock, monotonic
from harvest_async.config import Settings
from harvest_async.core.ports import Gap
from harvest_async.errors import PermissionDenied, RedisUnavailable
from harvest_async.redis_io.cluster.cluster_notifications import ClusterSource
from harvest_async.redis_io.liveness import LivenessWriter
from harvest_async.redis_io.notifications import KeyspaceSource
from harvest_async.service.runner import Runner
from harvest_async.service.sdnotify import Notifier

__all__ = ["Heartbeat"]


@dataclass(frozen=True)
class Heartbeat:
    """`log`: where its denials go (the service's logger: the same lines as other steps)."""

    liveness: LivenessWriter
    source: KeyspaceSource | ClusterSource
    runner: Runner
    clock: Clock
    settings: Settings
    notifier: Notifier
    outage: RedisOutage
    log: logging.Logger

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Started after the first refresh (ready means announced); runs until cancelled."""
        source, notifier, outage = self.source, self.notifier, self.outage
        interval = self._interval()
        denials = DenialLog(self.log)
        # while Redis is down the beats back off (the watchdog pings keep their pace)
        backoff = Backoff(first=interval, cap=max(interval, 10.0))
        next_beat = 0.0
        while True:
            # the watchdog ping comes from this loop: a stuck event loop stops it
            notifier.watchdog()
            if monotonic() >= next_beat:
                try:
                    await self._refresh(after_outage=bool(backoff.attempts))
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

    def _interval(self) -> float:
        """Often enough for the liveness TTL, the group's leases and systemd's watchdog."""
        settings = self.settings
        interval = min(settings.liveness_ttl_sec / 3, 5.0)
        if settings.group is not None:
            interval = min(interval, settings.lease_ttl_sec / 4)  # the group's membership
        if self.notifier.watchdog_sec is not None:
            interval = min(interval, self.notifier.watchdog_sec / 3)
        return interval

    async def _refresh(self, *, after_outage: bool) -> None:
        """One refresh with the notification canary armed for it, then systemd's status."""
        runner = self.runner
        # arm the canary before writing: the notification can be consumed before beat()
        # returns, and arming afterwards would then wait for one never coming
        self.source.expect_canary()
        gone = await self._beat()
        if gone and not after_outage:
            # our own key vanished: so may have the proposals, with no notification or
            # reconnect to say so (FLUSHALL): check them all. (After an outage of our own,
            # the reconnect's resync checks them already.)
            runner.emit(Gap("liveness key lost"))
        self.notifier.status(
            f"{len(runner.engine)} symbols, {runner.writes} writes, mode={self.source.mode}"
        )

    async def _beat(self) -> bool:
        """One refresh, finished (within the shutdown grace) even when the service is
        stopping: cut off on the wire, it could reach Redis after the shutdown's DEL and
        revive the key. True: the key was gone (see `LivenessWriter.beat`)."""
        grace = self.settings.shutdown_grace_sec
        gone = False
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(grace) as limit:
                gone = await self.liveness.beat(self.clock.now(), len(self.runner.engine))
        if limit.cancelled_caught:
            raise RedisUnavailable(f"liveness write did not finish within {grace:g} s")
        return gone
