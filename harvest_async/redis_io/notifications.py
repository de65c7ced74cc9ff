"""Change signals from Redis: keyspace notifications (and optional input streams).

A notification only says "look again"; the hashes are the truth. Every (re)subscription
is a gap: the source checks that `notify-keyspace-events` still covers what we need and
emits `Gap`, and the runner resyncs every symbol (a cluster node's listener: those with a
key in the slots it serves, `scope`) before trusting further events. A
self-canary (the service's own liveness write must come back as a notification) catches
a subscription that silently stopped delivering. Without notifications the source says
so once and asks for a reconcile every `poll_interval` instead.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskStatus
from redis.exceptions import ResponseError

from harvest_async.backoff import Backoff, DenialLog, RedisOutage
from harvest_async.clock import monotonic
from harvest_async.core.keys import Keys, glob_escape
from harvest_async.core.ports import Changed, Event, Gap
from harvest_async.errors import PermissionDenied, RedisUnavailable
from harvest_async.redis_io.client import (
    REDIS_ERRORS,
    REDIS_OR_REPLY_ERRORS,
    client_for,
    describe_url,
    is_permission_error,
    refused,
)
from harvest_async.redis_io.input_streams import StreamFollower
from harvest_async.redis_io.sentinel import watch_switches
from harvest_async.redis_io.wire import Subscriber, endpoint_from_url

__all__ = ["NOTIFY_CONNECTION", "KeyspaceSource", "notify_flags_cover", "read_notify_flags"]

log = logging.getLogger(__name__)

# CLIENT SETNAME of the subscription's connection (CLIENT LIST shows it)
NOTIFY_CONNECTION = "harvest-async-notify"


def notify_flags_cover(flags: str) -> tuple[bool, list[str]]:
    """(usable, missing): usable needs K and h; g (DEL) and x (expiry) are wanted too."""
    has_all = "A" in flags
    missing = [c for c in "Khgx" if c not in flags and not (c != "K" and has_all)]
    usable = "K" in flags and ("h" in flags or has_all)
    return usable, missing


async def read_notify_flags(client: aioredis.Redis) -> str | None:
    """The server's notify-keyspace-events, or None when CONFIG is not allowed."""
    try:
        reply = await client.config_get("notify-keyspace-events")
    except ResponseError as exc:  # CONFIG disabled/renamed, or ACL NOPERM
        log.debug("CONFIG GET not allowed: %s", exc)
        return None
    value = reply.get("notify-keyspace-events")
    return str(value) if value is not None else ""


class KeyspaceSource:
    def __init__(
        self,
        url: str,
        password: str | None,
        keys: Keys,
        *,
        instance: str,
        input_streams: Sequence[str] = (),
        poll_interval: float = 2.0,
        canary_timeout: float = 2.0,
        outage: RedisOutage | None = None,
        scope: Callable[[], frozenset[int] | None] | None = None,
        announce: bool = True,
    ) -> None:
        """`scope`: the cluster slots this server's notifications concern, asked when a gap
        is emitted (a cluster node's: the slots it serves); None: every symbol's (one
        server). `announce`: log the first mode at INFO (a cluster's new primary: DEBUG,
        the topology line says it; a poll mode is a WARNING either way)."""
        self.url = url
        self.password = password
        self.keys = keys
        self.instance = instance
        self.input_streams = tuple(input_streams)
        self.poll_interval = poll_interval
        self.canary_timeout = canary_timeout
        self.mode = "starting"  # "notify" | "poll"
        self.subscriptions = 0  # (re)subscriptions so far
        self._canary_due: float | None = None
        self._session_scope: anyio.CancelScope | None = None
        self._emit: Callable[[Event], None] = lambda _e: None
        self._liveness_channel = keys.liveness_channel(instance)
        self._subscribed = False  # the current session got as far as subscribing
        self._flags_readable = True  # False: CONFIG GET denied, only the canary can tell
        self._denials = DenialLog(log)
        self._endpoint = endpoint_from_url(url, password)
        # reconnects back off (with jitter) and report to the service's one Redis outage
        self.outage = outage or RedisOutage(describe_url(url), log)
        self._backoff = Backoff(first=0.2, cap=10.0)
        self._moved = anyio.Event()  # via Sentinel: the primary moved since the last attempt
        self._switches = 0  # via Sentinel: `Sentinels.switches` when this session began
        self._scope = scope or _every_symbol
        self._announce = announce

    # -- canary --------------------------------------------------------------------------
    def expect_canary(self) -> None:
        """The liveness key is being written: its notification must arrive soon (if we are
        subscribed: a write made while resubscribing is not delivered to us)."""
        if self._canary_due is None and self._subscribed:
            self._canary_due = monotonic() + self.canary_timeout

    def cancel_canary(self) -> None:
        """The liveness write failed: no notification is coming for it."""
        self._canary_due = None

    def _canary_seen(self) -> None:
        self._canary_due = None
        if self.mode == "poll":
            self._set_mode("notify", "keyspace notifications are arriving again")

    def _gap(self, reason: str) -> None:
        """A gap for what this server's notifications concern (`scope`); none when it
        serves no slot any more (what it served then has moved: a topology gap each)."""
        slots = self._scope()
        if slots is None or slots:
            self._emit(Gap(reason, slots))

    def _set_mode(self, mode: str, why: str) -> None:
        if mode != self.mode:
            quiet = self.mode == "starting" and not self._announce
            level = logging.WARNING if mode == "poll" else logging.DEBUG if quiet else logging.INFO
            log.log(level, "change detection: %s (%s)", mode, why)
            self.mode = mode

    # -- main ----------------------------------------------------------------------------
    async def run(self, emit: Callable[[Event], None], *, task_status: TaskStatus[None]) -> None:
        self._emit = emit
        started = False
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch)
            if self.input_streams:
                tg.start_soon(self._streams)
            if self._endpoint.sentinel is not None:
                tg.start_soon(watch_switches, self._endpoint.sentinel, self._primary_moved)
            while True:
                self._subscribed = False
                self._moved = anyio.Event()
                try:
                    with anyio.CancelScope() as scope:
                        self._session_scope = scope
                        await self._session(None if started else task_status)
                    started = True
                except RedisUnavailable as exc:
                    # only the very first subscription is fatal (the caller reports it);
                    # `started` is set when a session *ends*, so a first session that
                    # subscribed and later lost its connection must not count as failing
                    if self.subscriptions == 0:
                        raise
                    started = True
                    self._canary_due = None  # no notification reaches a lost subscription
                    if isinstance(exc, PermissionDenied):
                        # the ACL no longer lets us subscribe: keep serving by polling
                        self._denials.denied(exc)
                        self._set_mode("poll", "subscribing is not permitted")
                        delay = self._backoff.next_delay()
                    elif self._subscribed:
                        # a working subscription dropped (CLIENT KILL, a restart): resubscribe
                        # at once; if Redis is gone, that attempt starts the outage
                        log.debug("notification connection lost (%s); resubscribing", exc)
                        delay = 0.0
                    else:
                        self.outage.failed("notifications", str(exc))
                        delay = self._backoff.next_delay()
                    async with anyio.create_task_group() as waits:
                        # the delay, Redis back (another loop said so) or a new primary
                        for wait in (self.outage.pause(delay), self._moved.wait()):
                            waits.start_soon(_first_wins, wait, waits.cancel_scope)

    def _primary_moved(self, old: str, new: str) -> None:
        """A sentinel announced a failover: the subscription is on the old primary (the
        wire's connections are replaced by themselves): subscribe anew, which is a gap."""
        log.warning(
            "Sentinel failover: the primary moved from %s to %s; resubscribing and resyncing",
            old,
            new,
            extra={"event": "failover", "old_primary": old, "new_primary": new},
        )
        self._moved.set()
        if self._endpoint.sentinel is not None:  # the switch is handled here, not in _watch
            self._switches = self._endpoint.sentinel.switches
        if self._session_scope is not None and self.subscriptions:  # not before the first
            self._session_scope.cancel()

    def _primary_changed(self) -> None:
        """A connection to the deployment found the primary gone (READONLY) before any
        +switch-master was heard: the subscription may be on a replica now."""
        assert self._endpoint.sentinel is not None
        self._switches = self._endpoint.sentinel.switches
        if self._session_scope is not None and self.subscriptions:
            log.info("the primary changed (a write was refused as READONLY); resubscribing")
            self._session_scope.cancel()

    async def _session(self, task_status: TaskStatus[None] | None) -> None:
        """One subscription: check the flags, PSUBSCRIBE, report the gap, consume.

        The subscriber is a wire connection of its own (`wire.Subscriber`), messages read
        in batches straight from hiredis: redis-py's PubSub costs ~25 µs per message, a
        third of the whole service at 10k events/s. It never reconnects by itself: a lost
        connection ends the session, and the next one is a new subscription and
        therefore a Gap.
        """
        if self._endpoint.sentinel is not None:
            self._switches = self._endpoint.sentinel.switches
        flags = await self._notify_flags()
        patterns = [*self.keys.keyspace_patterns(), glob_escape(self._liveness_channel)]
        try:
            subscriber = await Subscriber.open(self._endpoint, patterns, name=NOTIFY_CONNECTION)
        except PermissionDenied:  # PSUBSCRIBE, a channel, CLIENT SETNAME: named
            raise
        except RedisUnavailable as exc:
            raise RedisUnavailable(f"subscribing: {exc}") from exc
        try:
            self._denials.allowed()
            self._backoff.reset()
            self.outage.recovered("notifications")
            self._apply_flags(flags)
            self.subscriptions += 1
            self._subscribed = True
            if task_status is not None:
                task_status.started()
            else:
                self._gap("resubscribed")
            await self._consume(subscriber)
        finally:
            subscriber.close()

    async def _notify_flags(self) -> str | None:
        client = client_for(self.url, self.password, name="harvest-async-notify-check")
        try:
            return await read_notify_flags(client)
        except REDIS_OR_REPLY_ERRORS as exc:
            if is_permission_error(str(exc)):  # CLIENT SETNAME refused
                raise refused("subscribing to keyspace notifications", exc) from exc
            raise RedisUnavailable(
                f"subscribing at {describe_url(self.url)}: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(*REDIS_ERRORS):
                    await client.aclose()

    def _apply_flags(self, flags: str | None) -> None:
        self._flags_readable = flags is not None
        if flags is None:
            if self.mode == "starting":
                self._set_mode("notify", "CONFIG GET not allowed; trusting the canary")
            return  # a poll mode stays until the canary is seen again
        usable, missing = notify_flags_cover(flags)
        if not usable:
            self._set_mode(
                "poll",
                f"notify-keyspace-events={flags!r} lacks {''.join(missing)}; reconciling every "
                f"{self.poll_interval:g} s. Set notify-keyspace-events KEA (or Khgx) in the "
                "server's config file, not only with CONFIG SET, which a restart forgets",
            )
        else:
            if missing:
                log.warning(
                    "notify-keyspace-events=%r lacks %s: deletions/expiries are noticed only at "
                    "the periodic reconcile",
                    flags,
                    "".join(missing),
                )
            self._set_mode("notify", f"notify-keyspace-events={flags!r}")

    async def _consume(self, subscriber: Subscriber) -> None:
        base = len(self.keys.keyspace_channel_prefix())
        classify = self.keys.classify
        emit = self._emit
        liveness = self._liveness_channel
        # waits in the event loop until messages arrive (never a spinning poll); raises
        # RedisUnavailable once the connection is lost and every message before is read
        async for batch in subscriber:
            for msg in batch:
                # ["pmessage", pattern, channel, event]; anything else is skipped
                if msg[0] != "pmessage":
                    continue
                channel: str = msg[2]
                if channel == liveness:
                    self._canary_seen()
                    continue
                found = classify(channel[base:])
                if found is not None:
                    emit(Changed(found[1], found[0]))

    # -- background duties ---------------------------------------------------------------
    async def _watch(self) -> None:
        """Poll-mode reconciles and the canary deadline."""
        while True:
            await anyio.sleep(min(0.25, self.poll_interval))
            if self.mode == "poll":
                self._gap("poll")  # a reconcile of what this server holds
                await anyio.sleep(max(0.0, self.poll_interval - 0.25))
            sentinels = self._endpoint.sentinel
            if sentinels is not None and sentinels.switches != self._switches:
                self._primary_changed()
            due = self._canary_due
            if due is not None and monotonic() > due:
                self._canary_due = None
                if self.mode == "notify" and self._subscribed:
                    self._canary_missed()

    def _canary_missed(self) -> None:
        """Reconnect: the subscription may have stopped delivering. Without the flags to
        say whether notifications are on at all, also poll until the canary is seen."""
        if self._flags_readable:
            log.warning(
                "canary: own liveness write not notified within %.1f s; reconnecting",
                self.canary_timeout,
            )
        else:
            self._set_mode(
                "poll",
                f"own liveness write not notified within {self.canary_timeout:g} s and CONFIG "
                "GET is not allowed, so notify-keyspace-events cannot be checked; reconciling "
                f"every {self.poll_interval:g} s until notifications arrive. Set "
                "notify-keyspace-events KEA (or Khgx) in the server's config file",
            )
        scope = self._session_scope
        if scope is not None:
            scope.cancel()

    async def _streams(self) -> None:
        """The input streams, followed from the last entry read (`input_streams`)."""
        follower = StreamFollower(
            self.url,
            self.password,
            self.input_streams,
            last={},
            outage=self.outage,
            denials=self._denials,
        )
        await follower.run(self._emit)


def _every_symbol() -> None:
    return None


async def _first_wins(wait: Awaitable[object], scope: anyio.CancelScope) -> None:
    """Await `wait`, then cancel its siblings: used to wait for whichever comes first."""
    await wait
    scope.cancel()
