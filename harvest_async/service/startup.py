"""`run` started while Redis is down: wait for it instead of exiting.

A Redis that is still booting, or restarting with the host, is an outage to wait out, not
a failure: exiting 3 would make systemd restart the unit until its start limit
(`StartLimitBurst`) leaves it failed for good. So `run` waits up to
`REDIS_STARTUP_TIMEOUT_SEC` (0: forever), logged as one outage (a WARNING, reminders,
an INFO), with systemd told why it is not ready yet. Refused credentials, a missing
permission or an unsupported server are not outages: they stop the start at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from harvest_async.backoff import Backoff, RedisOutage
from harvest_async.clock import monotonic
from harvest_async.config import Settings
from harvest_async.errors import AuthenticationFailed, PermissionDenied, RedisUnavailable
from harvest_async.redis_io.client import check_redis, describe_url
from harvest_async.service.sdnotify import Notifier

__all__ = ["wait_for_redis"]

log = logging.getLogger(__name__)

# systemd's start timeout (TimeoutStartSec) is pushed back this far at every attempt:
# more than the longest delay between two attempts
_EXTEND_SEC = 60


async def wait_for_redis(
    settings: Settings,
    notifier: Notifier,
    *,
    check: Callable[[Settings], Awaitable[None]] = check_redis,
) -> None:
    """Return once Redis answers (`check`); raise its RedisUnavailable after
    `REDIS_STARTUP_TIMEOUT_SEC`, or at once for an error waiting cannot fix."""
    where = describe_url(settings.redis_url)
    timeout = settings.redis_startup_timeout_sec
    started = monotonic()
    backoff = Backoff(first=0.5, cap=10.0)
    outage = RedisOutage(where, log, remind_every=settings.outage_reminder_sec)
    while True:
        try:
            await check(settings)
        except (AuthenticationFailed, PermissionDenied):
            raise  # a configuration to fix, not an outage to wait out
        except RedisUnavailable as exc:
            waited = monotonic() - started
            if timeout > 0 and waited >= timeout:
                raise RedisUnavailable(
                    f"{exc} (gave up after {waited:.0f} s: REDIS_STARTUP_TIMEOUT_SEC={timeout:g})"
                ) from exc
            outage.failed("startup", str(exc))
            # the watchdog and the start timeout both run while we wait: keep them fed
            notifier.send(
                f"STATUS=waiting for Redis at {where}",
                "WATCHDOG=1",
                f"EXTEND_TIMEOUT_USEC={_EXTEND_SEC * 1_000_000}",
            )
            delay = backoff.next_delay()
            if timeout > 0:
                delay = max(0.0, min(delay, started + timeout - monotonic()))
            await anyio.sleep(delay)
            continue
        outage.recovered("startup")
        return
