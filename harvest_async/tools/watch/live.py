"""`harvest-async watch`: the Redis side (notifications, re-reads) and the live loop."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import anyio

from harvest_async.clock import Clock, SystemClock
from harvest_async.config import Settings
from harvest_async.core.keys import Keys, glob_escape
from harvest_async.errors import RedisUnavailable
from harvest_async.redis_io.client import (
    REDIS_ERRORS,
    Client,
    client_for,
    describe_url,
    scan_symbols,
)
from harvest_async.redis_io.notifications import notify_flags_cover, read_notify_flags
from harvest_async.signals import cancel_on_signal

# -- Redis side ------------------------------------------------------------------------------
from harvest_async.tools.watch.model import KEEP_RETRACTED_SEC, Row, WatchModel, use_color
from harvest_async.tools.watch.render import Terminal, render

POLL_SEC = 1.0
_WATCH_ERRORS: tuple[type[BaseException], ...] = (RedisUnavailable, *REDIS_ERRORS)


class Watcher:
    """Keeps a WatchModel in step with the proposal hashes in Redis."""

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
    ) -> None:
        self.client = client
        self.keys = keys
        self.symbols = tuple(symbols) if symbols is not None else None
        self.clock = clock or SystemClock()
        self.model = WatchModel(kill_threshold=kill_threshold)
        self.url = url
        self.password = password
        self._dirty: set[str] = set()
        self._wake = anyio.Event()
        self.changed: Callable[[], None] = lambda: None

    def _wanted(self, symbol: str) -> bool:
        return self.symbols is None or symbol in self.symbols

    async def _names(self) -> list[str]:
        if self.symbols is not None:
            return list(self.symbols)
        return sorted(await scan_symbols(self.client, self.keys.harvest_prefix))

    async def _read(self, symbols: Sequence[str]) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for start in range(0, len(symbols), 500):
            async with self.client.pipeline(transaction=False) as pipe:
                for sym in symbols[start : start + 500]:
                    pipe.hgetall(self.keys.proposal(sym))
                out.extend(await pipe.execute())
        return out

    async def _recent_retractions(self, count: int = 500) -> list[tuple[float, str, str]]:
        """(at, symbol, reason) of the newest retract entries, newest first."""
        try:
            entries: Any = await self.client.xrevrange(self.keys.stream, count=count)
        except REDIS_ERRORS:
            raise
        except Exception:  # noqa: BLE001 - no stream / wrong type: no reasons to show
            return []
        out: list[tuple[float, str, str]] = []
        for entry_id, fields in entries:
            if fields.get("event") == "retract":
                at = int(str(entry_id).split("-", 1)[0]) / 1000.0
                out.append((at, fields.get("symbol", ""), fields.get("reason", "")))
        return out

    async def load(self) -> None:
        """Read every proposal (and recent retractions) from scratch."""
        try:
            names = await self._names()
            hashes = await self._read(names)
            retracts = await self._recent_retractions()
        except REDIS_ERRORS as exc:
            raise RedisUnavailable(f"watch: reading proposals: {exc}") from exc
        now = self.clock.now()
        model = self.model
        present = set()
        for sym, fields in zip(names, hashes, strict=True):
            if fields:
                present.add(sym)
                model.apply(sym, fields, now)
        for sym, row in list(model.rows.items()):
            if sym not in present and row.fields is not None:
                model.retract(sym, "", now)
        seen: set[str] = set()
        for at, sym, reason in retracts:  # newest first
            if sym in seen or sym in present or not self._wanted(sym):
                continue
            seen.add(sym)
            if now - at <= KEEP_RETRACTED_SEC and sym not in model.rows:
                model.rows[sym] = Row(sym, None, reason, at)
            elif sym in model.rows and model.rows[sym].fields is None:
                model.retract(sym, reason, now)
        self.changed()

    async def refresh(self, symbols: Sequence[str]) -> None:
        try:
            hashes = await self._read(symbols)
        except REDIS_ERRORS as exc:
            raise RedisUnavailable(f"watch: reading proposals: {exc}") from exc
        now = self.clock.now()
        gone = []
        changed = False
        for sym, fields in zip(symbols, hashes, strict=True):
            if self.model.apply(sym, fields, now):
                changed = True
                if not fields:
                    gone.append(sym)
        if gone:
            try:
                reasons = {s: r for _at, s, r in reversed(await self._recent_retractions(200))}
            except REDIS_ERRORS as exc:
                raise RedisUnavailable(f"watch: reading the audit stream: {exc}") from exc
            for sym in gone:
                if sym in reasons:
                    self.model.retract(sym, reasons[sym], now)
        if changed:
            self.changed()

    async def run(self) -> None:
        """Follow changes until cancelled; reconnects by itself."""
        delay = 0.5
        while True:
            try:
                await self._session()
            except BaseException as raised:
                exc = _redis_error(raised)
                if exc is None:
                    raise
                self.model.status = f"redis: {exc}; retrying"
                self.changed()
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:  # pragma: no cover - _session only ends by an error or cancellation
                return

    async def _session(self) -> None:
        sub = client_for(
            self.url, self.password, retries=0, socket_timeout=None, name="harvest-async-watch"
        )
        pubsub = sub.pubsub()
        try:
            flags = await read_notify_flags(sub)
            base = self.keys.keyspace_channel_prefix()
            prefix = self.keys.harvest_prefix
            await pubsub.psubscribe(base + glob_escape(prefix) + "*")
            usable, missing = notify_flags_cover(flags or "")
            if flags is None or (usable and "g" not in missing):
                self.model.mode = "notify"
            else:
                self.model.mode = f"poll {POLL_SEC:g}s (notify-keyspace-events={flags!r})"
            await self.load()  # after subscribing: nothing is missed in between
            self.model.status = ""
            self.changed()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._refresher)
                if self.model.mode != "notify":
                    tg.start_soon(self._poller)
                cut = len(base) + len(prefix)
                while True:
                    msg = await pubsub.get_message(timeout=None)
                    if msg is None or msg.get("type") != "pmessage":
                        continue
                    symbol = str(msg["channel"])[cut:]
                    if symbol and self._wanted(symbol):
                        self._dirty.add(symbol)
                        self._wake.set()
        finally:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                    await sub.aclose()

    async def _refresher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await anyio.sleep(0.05)  # coalesce a burst into one pipeline
            batch, self._dirty = sorted(self._dirty), set()
            if batch:
                await self.refresh(batch)

    async def _poller(self) -> None:
        while True:
            await anyio.sleep(POLL_SEC)
            await self.load()


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


async def live(
    watcher: Watcher,
    terminal: Terminal,
    *,
    color: bool,
    title: str,
    handle_signals: bool = True,
    footer: str = "q or Ctrl-C quits",
) -> None:
    """Draw the table until Ctrl-C / SIGTERM / `q` (or until cancelled)."""
    redraw = anyio.Event()

    def changed() -> None:
        redraw.set()

    watcher.changed = changed
    clock = watcher.clock
    async with anyio.create_task_group() as tg:

        async def stop_on_q(fd: int) -> None:
            while True:
                await anyio.wait_readable(fd)
                data = os.read(fd, 64)
                if not data or b"q" in data.lower():
                    tg.cancel_scope.cancel()
                    return

        async def on_resize() -> None:
            with anyio.open_signal_receiver(signal.SIGWINCH) as signals:
                async for _ in signals:
                    redraw.set()

        if handle_signals:
            tg.start_soon(cancel_on_signal, tg.cancel_scope)
        if terminal.in_fd is not None:
            tg.start_soon(stop_on_q, terminal.in_fd)
        tg.start_soon(on_resize)
        tg.start_soon(watcher.run)
        while True:
            redraw = anyio.Event()  # before drawing: a change during the draw is not lost
            width, height = terminal.size()
            now = clock.now()
            watcher.model.prune(now)
            terminal.draw(
                render(
                    watcher.model,
                    now,
                    width=width,
                    height=height,
                    color=color,
                    title=title,
                    footer=footer,
                )
            )
            with anyio.move_on_after(1.0):  # ages tick every second
                await redraw.wait()
            await anyio.sleep(0.1)  # at most ~10 redraws per second


async def run_watch(
    settings: Settings,
    *,
    once: bool = False,
    color: bool | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """What `harvest-async watch` runs."""
    client = client_for(settings.redis_url, settings.redis_password, name="harvest-async-watch")
    try:
        try:
            await client.ping()
        except REDIS_ERRORS as exc:
            raise RedisUnavailable(
                f"cannot reach Redis at {describe_url(settings.redis_url)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        watcher = Watcher(
            client,
            settings.keys,
            symbols=settings.symbols,
            kill_threshold=settings.theta.kill_threshold,
            url=settings.redis_url,
            password=settings.redis_password,
        )
        title = describe_url(settings.redis_url)
        if once:
            await watcher.load()
            watcher.model.mode = "snapshot"
            colored = use_color(out) if color is None else color
            # a terminal's width when there is one; for a pipe, whole lines
            width = shutil.get_terminal_size((100, 40)).columns if out.isatty() else 1000
            lines = render(
                watcher.model,
                watcher.clock.now(),
                width=width,
                color=colored,
                title=title,
                live=False,
            )
            out.write("\n".join(lines) + "\n")
            out.flush()
            return 0
        colored = use_color(out) if color is None else color
        with Terminal(out) as terminal:
            await live(watcher, terminal, color=colored, title=title)
        return 0
    finally:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(*REDIS_ERRORS):
                await client.aclose()
