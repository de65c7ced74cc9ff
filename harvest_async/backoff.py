"""Retrying something that fails for a while: exponential backoff with jitter, and an
outage that is logged once when it starts and once when it clears (not per attempt).
`RedisOutage` is the one outage that every reconnect loop of the service reports to.

Pure bookkeeping: the caller decides how to wait (a timer on its injected clock, or
`Outage.pause`), so the same helper serves an event loop and a plain retry loop.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import anyio

from harvest_async.clock import Clock, monotonic
from harvest_async.errors import PermissionDenied

__all__ = ["Backoff", "DenialLog", "Outage", "RedisOutage"]


class Backoff:
    """Delays `first`, 2x, 4x, ... up to `cap`, each shortened by up to `jitter` (a
    fraction) at random, so that many clients retrying the same server spread out."""

    def __init__(
        self,
        *,
        first: float = 0.1,
        cap: float = 10.0,
        jitter: float = 0.2,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < first <= cap or not 0 <= jitter < 1:
            raise ValueError(f"bad backoff: first={first} cap={cap} jitter={jitter}")
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self._rng = rng
        self.attempts = 0  # delays handed out since the last reset

    def next_delay(self) -> float:
        base = min(self.cap, self.first * 2.0 ** min(self.attempts, 64))
        self.attempts += 1
        return base * (1.0 - self.jitter * self._rng())

    def reset(self) -> None:
        self.attempts = 0


class Outage:
    """`failed(detail)` on every failed attempt (WARNING on the first only, with `detail`),
    `recovered()` on a success (INFO once if an outage was on); each failure returns the
    delay before the next attempt."""

    def __init__(
        self, what: str, logger: logging.Logger, clock: Clock, backoff: Backoff | None = None
    ) -> None:
        self.what = what
        self.log = logger
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.since: float | None = None  # clock time of the first failure of this outage

    @property
    def active(self) -> bool:
        return self.since is not None

    def failed(self, detail: str) -> float:
        delay = self.backoff.next_delay()
        if self.since is None:
            self.since = self.clock.now()
            self.log.warning(
                "%s (%s); retrying with backoff (up to %g s)", self.what, detail, self.backoff.cap
            )
        else:
            self.log.debug("%s still (%s); next attempt in %.2f s", self.what, detail, delay)
        return delay

    def recovered(self) -> None:
        if self.since is None:
            return
        self.log.info(
            "%s: cleared after %.1f s (%d failed attempts)",
            self.what,
            self.clock.now() - self.since,
            self.backoff.attempts,
        )
        self.since = None
        self.backoff.reset()

    async def pause(self, detail: str) -> None:
        """Record a failure and wait (on the injected clock) until the next attempt."""
        delay = self.failed(detail)
        await self.clock.sleep_until(self.clock.now() + delay)


class DenialLog:
    """Logs each permission refusal once while it lasts, and when it is over: work that
    waits for a permission (the ACL changed under us) is retried without a line per try."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._active: set[str] = set()

    def denied(self, exc: PermissionDenied) -> None:
        if exc.what in self._active:
            self._log.debug("still %s", exc)
            return
        self._active.add(exc.what)
        self._log.error("%s; the affected work waits and is retried", exc)

    def allowed(self) -> None:
        if self._active:
            self._log.info("permission granted again: %s", ", ".join(sorted(self._active)))
            self._active.clear()


class RedisOutage:
    """Redis unreachable, as seen by several loops at once (processing, notifications,
    liveness, input streams): one WARNING when the first loop fails, a reminder at most
    every `remind_every` seconds, and one INFO with the duration when the first loop
    succeeds again. Each loop backs off on a `Backoff` of its own, names itself as
    `member`, and waits with `pause`: the first success wakes the others, so that they do
    not sit out the rest of a 10 s delay once Redis answers."""

    def __init__(
        self,
        where: str,
        logger: logging.Logger,
        *,
        remind_every: float = 60.0,
        now: Callable[[], float] = monotonic,
    ) -> None:
        self.where = where  # the URL without credentials
        self.log = logger
        self.remind_every = remind_every
        self._now = now
        self.since: float | None = None
        self._reminded = 0.0
        self.outages = 0  # outages so far (tests, the benchmark)
        self._back: anyio.Event | None = None  # set when it ends (made in the event loop)

    @property
    def active(self) -> bool:
        return self.since is not None

    def failed(self, member: str, detail: str, *, node: tuple[str, int] | None = None) -> None:
        """`member`'s attempt failed with `detail` (it waits `pause(its delay)` next).
        `node`: the cluster node whose loss it was (`ClusterOutage`; one server: unused)."""
        now = self._now()
        if self.since is None:
            self.since = self._reminded = now
            self.outages += 1
            self.log.warning(
                "Redis at %s unavailable (%s: %s); retrying with backoff, reminders every %g s",
                self.where,
                member,
                detail,
                self.remind_every,
                extra={"event": "outage_start"},
            )
        elif now - self._reminded >= self.remind_every:
            self._reminded = now
            self.log.warning(
                "Redis at %s still unavailable after %.0f s (%s: %s)",
                self.where,
                now - self.since,
                member,
                detail,
            )
        else:
            self.log.debug("Redis still unavailable (%s: %s)", member, detail)

    def recovered(self, member: str) -> None:
        """`member` got an answer: the outage (if any) is over."""
        if self.since is None:
            return
        self.log.info(
            "Redis at %s available again after %.1f s of outage",
            self.where,
            self._now() - self.since,
            extra={"event": "outage_end", "duration_sec": round(self._now() - self.since, 3)},
        )
        self.since = None
        self.wake()

    def wake(self) -> None:
        """Cut every `pause` short: the others retry at once, and report again if they fail."""
        if self._back is not None:
            self._back.set()
            self._back = None

    async def pause(self, delay: float) -> bool:
        """Wait `delay` seconds, or less if another loop finds Redis back meanwhile
        (then True)."""
        if self._back is None:
            self._back = anyio.Event()
        back = self._back
        with anyio.move_on_after(delay):
            await back.wait()
        return back.is_set()
