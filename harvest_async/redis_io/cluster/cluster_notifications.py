"""Keyspace notifications on a Redis Cluster: one listener per primary.

Notifications are node-local (a write is notified only on the node that holds the key,
and on its replicas), so `ClusterSource` runs one `KeyspaceSource` per primary, each
with its own subscription, flags check, reconnects and gaps, and merges their events
into the service's one stream. It re-reads the slot map every `refresh_every` seconds
(and sees the refreshes the reader and sink make on MOVED or a lost node): a change of
the map is a gap for the slots that changed owner (the runner resyncs the symbols with
an input or proposal key there, `_gap`), a new primary gets a listener, a primary gone
(failed over, removed) loses its own.

A listener's own gaps (subscribed to a new primary, resubscribed after a lost connection,
a poll-mode tick) concern only the slots its node serves: each is scoped to them (`_served`).
The liveness canary is expected only from the listener of the node holding the liveness
key: it proves that node's subscription delivers, and its failure (a resubscription, or a
poll mode when the flags cannot be read) is that node's alone. Node losses are reported
node by node (`ClusterOutage`).

Input streams (INPUT_STREAMS) are read apart from the listeners (`ClusterStreams`): each
slot's streams on the primary serving that slot, following it when it moves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from urllib.parse import urlsplit, urlunsplit

import anyio
from anyio.abc import TaskGroup, TaskStatus

from harvest_async.clock import monotonic
from harvest_async.core.keys import Keys
from harvest_async.core.ports import Event, Gap
from harvest_async.core.slots import describe_slots
from harvest_async.errors import RedisUnavailable
from harvest_async.redis_io.client import describe_url
from harvest_async.redis_io.cluster.cluster_outage import ClusterOutage
from harvest_async.redis_io.cluster.cluster_streams import ClusterStreams
from harvest_async.redis_io.cluster.topology import Address, SlotMap, slot_of
from harvest_async.redis_io.notifications import KeyspaceSource

__all__ = ["ClusterSource", "node_url"]

log = logging.getLogger(__name__)

# a change of the slot map is acted on once it has been stable this long
SETTLE_SEC = 0.3
# how often the map is read while a node is known lost
SUSPECT_EVERY = 0.25
# how long a topology change's gap waits for the new primaries' listeners to subscribe
LISTEN_WAIT = 1.0


def node_url(url: str, address: Address) -> str:
    """`url` (credentials, TLS options kept) pointed at another node."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    netloc = (userinfo + "@" if userinfo else "") + f"{host}:{address[1]}"
    return urlunsplit((parts.scheme, netloc, "/0", parts.query, ""))


class ClusterSource:
    """The ChangeSource on a cluster (see the module)."""

    def __init__(
        self,
        url: str,
        password: str | None,
        keys: Keys,
        slots: SlotMap,
        *,
        instance: str,
        input_streams: Sequence[str] = (),
        poll_interval: float = 2.0,
        canary_timeout: float = 2.0,
        refresh_every: float = 5.0,
        outage: ClusterOutage | None = None,
    ) -> None:
        self.url = url
        self.outage = outage or ClusterOutage(describe_url(url), log, slots)
        self.password = password
        self.keys = keys
        self.slots = slots
        self.instance = instance
        self.poll_interval = poll_interval
        self.canary_timeout = canary_timeout
        self.refresh_every = refresh_every
        self.sources: dict[Address, KeyspaceSource] = {}
        self._scopes: dict[Address, anyio.CancelScope] = {}
        # new primaries whose first subscription the coming topology gap will cover
        self._covered: dict[Address, anyio.Event] = {}
        self._emit: Callable[[Event], None] = lambda _e: None
        self.streams = (
            ClusterStreams(
                password,
                input_streams,
                slots,
                url_of=partial(node_url, url),
                outage_of=self.outage.node,
            )
            if input_streams
            else None
        )

    # -- what the service asks of a source ----------------------------------------------
    @property
    def mode(self) -> str:
        modes = {s.mode for s in self.sources.values()}
        return "poll" if "poll" in modes else ("notify" if modes == {"notify"} else "starting")

    @property
    def subscriptions(self) -> int:
        return sum(s.subscriptions for s in self.sources.values())

    def _canary_source(self) -> KeyspaceSource | None:
        try:
            return self.sources.get(self.slots.node_of(self.keys.liveness(self.instance)))
        except RedisUnavailable:
            return None

    def expect_canary(self) -> None:
        source = self._canary_source()
        if source is not None:
            source.expect_canary()

    def cancel_canary(self) -> None:
        for source in self.sources.values():
            source.cancel_canary()

    # -- running ---------------------------------------------------------------------------
    async def run(self, emit: Callable[[Event], None], *, task_status: TaskStatus[None]) -> None:
        self._emit = emit
        if not self.slots.ready:
            await self.slots.refresh("start")
        self.slots.take_moved()  # the map as first read: the startup pass covers it
        owners = self.slots.owners()
        seen = self.slots.version
        async with anyio.create_task_group() as tg:
            for address in self.slots.primaries:
                await tg.start(self._listen, address, True)
            if self.streams is not None:
                tg.start_soon(self.streams.run, emit)
            task_status.started()
            while True:
                await self._wait_for_change(seen)
                # a reshard moves slots one by one: one gap for a burst of changes
                while self.slots.version != seen:
                    seen = self.slots.version
                    await anyio.sleep(SETTLE_SEC)
                before, owners = owners, self.slots.owners()
                moved = self.slots.take_moved()
                moves = _moves(before, owners, moved)
                # said by the resync's line, with how many symbols it reads again
                gap = self._gap(moved, moves)
                await self._apply(tg, moves)
                emit(gap)

    def _gap(self, moved: frozenset[int], moves: dict[Address | None, set[str]]) -> Gap:
        """The gap of a topology change: for the symbols with a key in a slot that changed
        owner (its notifications may have gone to a node not listened to yet, or the old
        primary's last acknowledged writes may be lost with it in a failover)."""
        primaries = ", ".join(f"{h}:{p}" for h, p in self.slots.primaries)
        lost = self.outage.lost
        went = "; ".join(
            f"{_name(old)}{' (lost)' if old in lost else ''} -> {', '.join(sorted(new))}"
            for old, new in moves.items()
            if old is not None and old not in self.slots.primaries
        )
        detail = (
            f"{len(moved)} slots moved ({describe_slots(moved)})"
            f"{'; ' + went if went else ''}; primaries {primaries}"
        )
        shared = {
            "the audit stream's": self.keys.stream,
            "the liveness key's": self.keys.liveness(self.instance),
        }
        for what, key in shared.items():
            if slot_of(key) in moved:
                # not a symbol's key, but one every symbol's publishing goes through (each
                # write appends its audit entry there first; the canary proves the events
                # arrive): which symbols a move of it touched cannot be told, so every one
                return Gap("cluster topology changed", None, f"{detail}; {what} slot among them")
        return Gap("cluster topology changed", moved, detail)

    async def _wait_for_change(self, seen: int) -> None:
        """Until the map's version moves: refreshed here every `refresh_every` seconds,
        every `SUSPECT_EVERY` while a node is known lost (a failover in progress), and by
        the reader or the sink after a MOVED or a lost node."""
        last = monotonic()
        while self.slots.version == seen:
            await anyio.sleep(0.1)
            every = SUSPECT_EVERY if monotonic() < self.slots.suspect_until else self.refresh_every
            if monotonic() - last >= every:
                last = monotonic()
                try:
                    await self.slots.refresh("periodic check")
                except RedisUnavailable as exc:
                    log.debug("cluster: reading the slot map failed: %s", exc)

    async def _apply(self, tg: TaskGroup, moves: dict[Address | None, set[str]]) -> None:
        """Listeners follow the primaries (at DEBUG: the topology line says it). A new
        primary's slots all changed owner (it served none before), so the topology gap
        emitted after its listener subscribed covers what was written there before: it
        is waited for (`LISTEN_WAIT` at most), and a listener subscribed by then emits
        no gap of its own (a second resync of the same symbols)."""
        current = set(self.slots.primaries)
        for address in [a for a in self._scopes if a not in current]:
            log.debug("cluster: %s:%d is no longer a primary; its listener stops", *address)
            self._scopes.pop(address).cancel()
            self.sources.pop(address, None)
        new = {address: anyio.Event() for address in sorted(current - set(self._scopes))}
        self._covered.update(new)
        for address in new:
            log.debug("cluster: new primary %s:%d; listening to it", *address)
            tg.start_soon(self._listen, address, False)
        with anyio.move_on_after(LISTEN_WAIT):
            for subscribed in new.values():
                await subscribed.wait()
        for address in new:  # one not subscribed yet emits its gap once it is
            self._covered.pop(address, None)
        replaced = {old: ", ".join(sorted(by)) for old, by in moves.items() if old is not None}
        self.outage.primaries_changed(self.slots.primaries, replaced)

    def _served(self, address: Address) -> frozenset[int] | None:
        """What a gap of `address`'s listener covers: the slots it serves when the gap is
        emitted. Enough although they may change while notifications were lost or the
        gap waits for its resync: a slot that moved to the node (before or after) or away
        from it is a topology change, whose own gap covers it with a resync that runs
        after the move (so it reads the keys where they are now, and whatever was
        written on this node before the move moved with them). A node the map does not
        name as a primary (a listener about to be stopped): every symbol, to be safe."""
        served = self.slots.served(address)
        return served if address in self.slots.primaries else None

    async def _listen(
        self,
        address: Address,
        first: bool,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """One primary's listener until it stops being a primary. At the service's start
        its first subscription must succeed (as on one server); later a listener that
        cannot subscribe retries until the topology drops its node."""
        url = node_url(self.url, address)
        with anyio.CancelScope() as scope:
            self._scopes[address] = scope
            while True:
                source = KeyspaceSource(
                    url,
                    self.password,
                    self.keys,
                    instance=self.instance,
                    poll_interval=self.poll_interval,
                    canary_timeout=self.canary_timeout,
                    # each node's reconnects reported as its own: one node down is not
                    # "Redis unavailable" for the service
                    outage=self.outage.node(address),
                    scope=partial(self._served, address),
                    announce=first,
                )
                self.sources[address] = source
                try:
                    if first:
                        await source.run(self._emit, task_status=task_status)
                    else:
                        async with anyio.create_task_group() as inner:
                            await inner.start(source.run, self._emit)
                            covered = self._covered.pop(address, None)
                            served = self._served(address)
                            if covered is not None:
                                covered.set()  # the topology gap comes after: it covers it
                            elif served is None or served:
                                # writes on it before it was subscribed: of its slots
                                self._emit(Gap("listening to a new primary", served))
                except (RedisUnavailable, BaseExceptionGroup) as exc:
                    # anyio's task groups wrap the source's error: a group of nothing but
                    # RedisUnavailable is a node in transition (a replica being promoted)
                    if first or (
                        isinstance(exc, BaseExceptionGroup)
                        and exc.split(RedisUnavailable)[1] is not None
                    ):
                        raise
                    log.debug("cluster: listener at %s:%d failed: %s", *address, exc)
                    await anyio.sleep(1.0)


def _name(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


def _moves(
    before: Sequence[Address | None], after: Sequence[Address | None], moved: frozenset[int]
) -> dict[Address | None, set[str]]:
    """Each former owner of a moved slot -> the nodes serving its slots now."""
    out: dict[Address | None, set[str]] = {}
    for slot in moved:
        new = after[slot]
        out.setdefault(before[slot], set()).add(_name(new) if new is not None else "nobody")
    return out
