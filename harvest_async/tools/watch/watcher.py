"""`harvest-async watch`: the Redis side (notifications, re-reads, liveness).

What keeps the table honest:

* keyspace notifications on the proposal keys mark symbols dirty; dirty symbols are
  re-read in one pipeline. `notify-keyspace-events` is read again every
  `FLAG_CHECK_SEC`: when notifications go off the table is re-read every `POLL_SEC`
  (mode=poll), when they come back it switches back (and re-reads once). Even in
  notify mode everything is re-read every `SAFETY_RELOAD_SEC`.
* the publishers' liveness keys are read every `PUBLISHER_CHECK_SEC` (a SCAN for new
  ones every `PUBLISHER_SCAN_SEC`, and at once when their keyspace events say so): no
  live publisher means the rows are not live advice, and the view says so.
* while Redis is unreachable the rows are kept as last seen and marked; the session is
  retried with backoff. On a cluster, one primary lost marks only the rows whose proposal
  key that node serves (`model.stale`): the others are read per node and stay live.

On a Redis Cluster the notifications come from every primary and the flags are every
primary's (`ClusterKeyEvents`), the reads go through redis-py's cluster client (pipelines
without transactions, one per node, SCAN over every primary); a change of the slot map ends
the session, and the next one subscribes on the new primaries and re-reads everything.
While a primary is lost the names re-read are the rows known (SCAN would need every node);
new symbols on the other nodes still arrive by notification.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import anyio

from harvest_async.backoff import Backoff
from harvest_async.clock import Clock, SystemClock, monotonic
from harvest_async.core.keys import Keys, glob_escape
from harvest_async.errors import RedisUnavailable
from harvest_async.redis_io.client import (
    REDIS_ERRORS,
    Client,
    ResponseError,
    hgetall_many,
    redis_errors,
    scan_symbols,
)
from harvest_async.redis_io.key_events import KeyEvents, ServerKeyEvents
from harvest_async.redis_io.leases import Leases
from harvest_async.redis_io.liveness import Publisher, read_publishers
from harvest_async.redis_io.notifications import notify_flags_cover
from harvest_async.tools.watch.model import (
    KEEP_RETRACTED_SEC,
    Row,
    WatchModel,
)

POLL_SEC = 1.0
FLAG_CHECK_SEC = 2.0
SAFETY_RELOAD_SEC = 10.0
PUBLISHER_CHECK_SEC = 1.0
PUBLISHER_SCAN_SEC = 10.0
EXPIRED_REASON = "expired: no publisher refreshed it before its TTL ran out"
_WATCH_ERRORS: tuple[type[BaseException], ...] = (RedisUnavailable, *REDIS_ERRORS)


class Watcher:
    """Keeps a WatchModel in step with the proposal hashes and liveness keys in Redis."""

    def __init__(
        self,
        client: Client,
        keys: Keys,
        *,
        symbols: Sequence[str] | None = None,
        clock: Clock | None = None,
        kill_threshold: float = 0.6,
        url: str = "",
        password: str | None = None,
        group: str | None = None,
        partitions: int = 64,
        events: KeyEvents | None = None,
    ) -> None:
        self.client = client
        # where notifications come from: the one server at `url`, or a cluster's primaries
        self.events = events or ServerKeyEvents(client, url, password)
        self.keys = keys
        self.symbols = tuple(symbols) if symbols is not None else None
        self.clock = clock or SystemClock()
        self.model = WatchModel(kill_threshold=kill_threshold, liveness_prefix=keys.liveness_prefix)
        self.url = url
        self.password = password
        self._dirty: set[str] = set()
        self._expired: set[str] = set()  # proposal keys whose expiry was notified
        self._wake = anyio.Event()
        self._publishers_wake = anyio.Event()
        self._known_publishers: set[str] = set()
        self._backoff = Backoff(first=0.5, cap=5.0)
        self.changed: Callable[[], None] = lambda: None
        # a publisher group's leases, read with the liveness keys (the OWNER column)
        self._leases = Leases(client, keys, group, "watch", 1.0) if group is not None else None
        self.model.partitions = partitions

    def _wanted(self, symbol: str) -> bool:
        return self.symbols is None or symbol in self.symbols

    async def _names(self) -> list[str]:
        if self.symbols is not None:
            return list(self.symbols)
        if self.events.lost_nodes():
            return sorted(s for s, row in self.model.rows.items() if row.fields is not None)
        return sorted(await scan_symbols(self.client, self.keys.harvest_prefix))

    async def _read(self, symbols: Sequence[str]) -> list[dict[str, str] | None]:
        """The proposal hashes; None for a symbol whose node is lost (kept as last seen).
        Read per node, in parallel: a cluster pipeline fails as a whole when one of its
        nodes does, and one node's failure must not spoil the others' rows."""
        keys = [self.keys.proposal(s) for s in symbols]
        by_node: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            by_node.setdefault(self.events.node_of(key), []).append(i)
        lost = self.events.lost_nodes()
        if len(by_node) <= 1 and not lost:  # one server (or one node): one pipeline
            return list(await hgetall_many(self.client, keys))
        out: list[dict[str, str] | None] = [None] * len(keys)
        failed: list[BaseException] = []
        read = 0

        async def one(node: str, items: list[int]) -> None:
            nonlocal read
            try:
                got = await hgetall_many(self.client, [keys[i] for i in items])
            except REDIS_ERRORS as exc:
                failed.append(exc)
                self.events.lose(node)
                return
            read += 1
            for i, fields in zip(items, got, strict=True):
                out[i] = fields

        async with anyio.create_task_group() as tg:
            for node, items in by_node.items():
                if node not in lost:
                    tg.start_soon(one, node, items)
        if failed and not read:
            raise failed[0]  # no node answered: Redis unreachable
        return out

    def _mark_stale(self) -> None:
        """The rows whose proposal key lives on a lost node: shown as last seen, marked."""
        lost = self.events.lost_nodes()
        stale = (
            {s for s in self.model.rows if self.events.node_of(self.keys.proposal(s)) in lost}
            if lost
            else set()
        )
        if stale != self.model.stale or sorted(lost) != self.model.lost_nodes:
            self.model.stale, self.model.lost_nodes = stale, sorted(lost)
            self.changed()

    async def _recent_retractions(self, count: int = 500) -> list[tuple[float, str, str]]:
        """(at, symbol, reason) of the newest retract entries, newest first."""
        try:
            async with redis_errors("watch: reading the audit stream", replies=False):
                try:
                    entries: Any = await self.client.xrevrange(self.keys.stream, count=count)
                except ResponseError:  # not a stream (or not readable): no reasons to show
                    return []
        except RedisUnavailable:
            if not self.events.lost_nodes():
                raise
            return []  # on a lost node, maybe: the reasons are missing meanwhile
        out: list[tuple[float, str, str]] = []
        for entry_id, fields in entries:
            if fields.get("event") == "retract":
                at = int(str(entry_id).split("-", 1)[0]) / 1000.0
                out.append((at, fields.get("symbol", ""), fields.get("reason", "")))
        return out

    async def load(self) -> None:
        """Read every proposal (and recent retractions) from scratch."""
        async with redis_errors("watch: reading proposals"):
            names = await self._names()
            hashes = await self._read(names)
        retracts = await self._recent_retractions()
        now = self.clock.now()
        model = self.model
        present = set()
        for sym, fields in zip(names, hashes, strict=True):
            if fields is None:  # on a lost node: kept as last seen
                present.add(sym)
            elif fields:
                present.add(sym)
                model.apply(sym, fields, now)
        gone = [s for s, row in model.rows.items() if s not in present and row.fields is not None]
        seen: set[str] = set()
        for at, sym, reason in retracts:  # newest first
            if sym in seen or sym in present or not self._wanted(sym):
                continue
            seen.add(sym)
            row = model.rows.get(sym)
            if row is None:
                if now - at <= KEEP_RETRACTED_SEC:
                    model.rows[sym] = Row(sym, None, reason, at)
                continue
            ends_it = sym in gone and self._retraction_of(row, at)
            if ends_it or (row.fields is None and not row.reason):
                model.retract(sym, reason, at)
        for sym in gone:
            if model.rows[sym].fields is not None:  # no retract entry for it: expired?
                model.retract(sym, self._gone_reason(sym), now)
        self._mark_stale()
        self.changed()

    def _retraction_of(self, row: Row, at: float) -> bool:
        """Whether a retract entry written at `at` is the end of what `row` shows."""
        published = row.published_at()
        return published is None or at >= published - 0.001

    def _gone_reason(self, symbol: str) -> str:
        if symbol in self._expired:
            self._expired.discard(symbol)
            return EXPIRED_REASON
        return ""

    async def refresh(self, symbols: Sequence[str]) -> None:
        async with redis_errors("watch: reading proposals"):
            hashes = await self._read(symbols)
        now = self.clock.now()
        gone: dict[str, Row] = {}
        changed = False
        for sym, fields in zip(symbols, hashes, strict=True):
            if fields is None:  # on a lost node: kept as last seen
                continue
            before = self.model.rows.get(sym)
            if self.model.apply(sym, fields, now):
                changed = True
                if not fields and before is not None:
                    gone[sym] = before
        if gone:
            found = await self._recent_retractions(200)
            reasons = {s: (at, r) for at, s, r in reversed(found)}  # the newest wins
            for sym, before in gone.items():
                at, reason = reasons.get(sym, (0.0, ""))
                if reason and self._retraction_of(before, at):
                    self.model.retract(sym, reason, now)
                else:
                    self.model.retract(sym, self._gone_reason(sym), now)
        self._mark_stale()
        if changed:
            self.changed()

    def _on_lost(self, publisher: Publisher, found: set[str]) -> bool:
        key = self.keys.liveness(publisher.instance)
        return publisher.instance not in found and (
            self.events.node_of(key) in self.events.lost_nodes()
        )

    async def check_publishers(self, *, scan: bool) -> None:
        """Read the liveness keys (all of them with `scan`, else the ones known)."""
        if not scan and not self._known_publishers:
            return  # none known: the next SCAN (or a liveness event) finds new ones
        names = None if scan else self._known_publishers
        try:
            publishers = await read_publishers(self.client, self.keys, names=names)
        except RedisUnavailable:
            if not self.events.lost_nodes():
                raise
            return  # a liveness key on the lost node, maybe: kept as last seen meanwhile
        if self.events.lost_nodes() and self.model.publishers:
            # a SCAN that skipped a lost node: its publishers are unknown, not gone
            found = {p.instance for p in publishers}
            publishers = sorted(
                [*publishers, *(p for p in self.model.publishers if self._on_lost(p, found))],
                key=lambda p: p.instance,
            )
        if scan:
            self._known_publishers = {p.instance for p in publishers}
        if self._leases is not None:
            state = await self._leases.read(self.model.partitions)
            owners = {p: s.holder for p, s in state.items()}
            if owners != self.model.owners:
                self.model.owners = owners
                self.changed()
        if publishers != self.model.publishers:
            self.model.publishers = publishers
            self.changed()

    async def _mode(self) -> tuple[str, str]:
        """(mode, why): notify when the flags cover proposal changes and deletions (on
        every node: a cluster's primary without them would leave its keys unwatched)."""
        for node, flags in (await self.events.flags()).items():
            if flags is None:
                why = "CONFIG GET not allowed: notifications unknown"
            else:
                usable, missing = notify_flags_cover(flags)
                if usable and "g" not in missing:
                    continue
                why = f"notify-keyspace-events={flags!r}"
            where = f" at {node}" if node else ""
            return "poll", (
                f"notifications off ({why}{where}): everything re-read every {POLL_SEC:g} s"
            )
        return "notify", ""

    async def run(self) -> None:
        """Follow changes until cancelled; reconnects by itself, with backoff."""
        while True:
            try:
                await self._session()
            except BaseException as raised:
                exc = _redis_error(raised)
                if exc is None:
                    raise
                if self.model.redis_down_since is None:
                    self.model.redis_down_since = self.clock.now()
                self.model.status = f"{type(exc).__name__}: {exc}"
                self.changed()
                await anyio.sleep(self._backoff.next_delay())
            # else: a cluster's topology changed; subscribe again at once

    async def _session(self) -> None:
        """Subscribe, read everything, follow the notifications; returns when they no
        longer cover every key (a cluster's topology changed), raises on a Redis error."""
        base = self.keys.keyspace_channel_prefix()
        proposals = base + self.keys.harvest_prefix
        liveness = base + self.keys.liveness_prefix
        patterns = (
            base + glob_escape(self.keys.harvest_prefix) + "*",
            base + glob_escape(self.keys.liveness_prefix) + "*",
        )
        async with self.events.subscribe(patterns) as messages:
            # after subscribing: nothing is missed in between
            self.model.mode, self.model.mode_detail = await self._mode()
            await self.load()
            await self.check_publishers(scan=True)
            self.model.redis_down_since = None
            self.model.status = ""
            self._backoff.reset()
            self.changed()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._refresher)
                tg.start_soon(self._poller)
                tg.start_soon(self._flag_checker)
                tg.start_soon(self._publisher_checker)
                async for message in messages:
                    if message is None:  # a new topology: subscribe again, re-read all
                        tg.cancel_scope.cancel()
                        break
                    channel, data = message
                    if channel.startswith(liveness):
                        self._known_publishers.add(channel[len(liveness) :])
                        self._publishers_wake.set()
                        continue
                    symbol = channel[len(proposals) :]
                    if symbol and self._wanted(symbol):
                        if data == "expired":
                            self._expired.add(symbol)
                        self._dirty.add(symbol)
                        self._wake.set()

    async def _refresher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await anyio.sleep(0.05)  # coalesce a burst into one pipeline
            batch, self._dirty = sorted(self._dirty), set()
            if batch:
                await self.refresh(batch)

    async def _poller(self) -> None:
        """Everything re-read every POLL_SEC without notifications, else now and then."""
        last = monotonic()
        while True:
            await anyio.sleep(POLL_SEC)
            if self.model.mode != "notify" or monotonic() - last >= SAFETY_RELOAD_SEC:
                await self.load()
                last = monotonic()

    async def _flag_checker(self) -> None:
        """notify-keyspace-events can change at any time (CONFIG SET, a server restart)."""
        while True:
            await anyio.sleep(FLAG_CHECK_SEC)
            mode, why = await self._mode()
            if (mode, why) != (self.model.mode, self.model.mode_detail):
                self.model.mode, self.model.mode_detail = mode, why
                if mode == "notify":
                    await self.load()  # what changed while notifications were off
                self.changed()

    async def _publisher_checker(self) -> None:
        scanned = monotonic()
        while True:
            with anyio.move_on_after(PUBLISHER_CHECK_SEC):
                await self._publishers_wake.wait()
            self._publishers_wake = anyio.Event()
            scan = monotonic() - scanned >= PUBLISHER_SCAN_SEC
            await self.check_publishers(scan=scan)
            if scan:
                scanned = monotonic()


def _redis_error(exc: BaseException) -> BaseException | None:
    """The Redis error behind `exc` (possibly wrapped in task-group exception groups)."""
    if isinstance(exc, _WATCH_ERRORS):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        match, rest = exc.split(_WATCH_ERRORS)
        if match is not None and rest is None:
            first: BaseException = match
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            return first
    return None
