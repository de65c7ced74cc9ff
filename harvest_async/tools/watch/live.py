"""`harvest-async watch`: the loop that draws the table (live, or `--once`) and the
command's entry point."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TextIO

import anyio

from harvest_async.config import Settings
from harvest_async.errors import RedisUnavailable
from harvest_async.redis_io.client import REDIS_ERRORS, check_redis, client_for, describe_url
from harvest_async.redis_io.cluster.cluster_key_events import ClusterKeyEvents
from harvest_async.redis_io.cluster.setup import cluster_client, tool_slots
from harvest_async.redis_io.key_events import KeyEvents
from harvest_async.signals import cancel_on_signal
from harvest_async.tools.watch.model import Row, row_filter, use_color
from harvest_async.tools.watch.render import Terminal, render
from harvest_async.tools.watch.watcher import Watcher

__all__ = ["live", "run_watch", "watcher_for"]


async def live(
    watcher: Watcher,
    terminal: Terminal,
    *,
    color: bool,
    title: str,
    handle_signals: bool = True,
    footer: str = "q or Ctrl-C quits",
    sort: str = "symbol",
    keep: Callable[[Row], bool] | None = None,
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
                    sort=sort,
                    keep=keep,
                )
            )
            with anyio.move_on_after(1.0):  # ages tick every second
                await redraw.wait()
            await anyio.sleep(0.1)  # at most ~10 redraws per second


@contextlib.asynccontextmanager
async def watcher_for(settings: Settings) -> AsyncIterator[Watcher]:
    """The watcher of `settings`' Redis: one server, or every primary of a cluster (its
    notifications) through redis-py's cluster client (its reads). Exit 3 when Redis
    cannot be reached."""
    await check_redis(settings)
    slots = await tool_slots(settings)
    events: KeyEvents | None = None
    if slots is None:
        client = client_for(settings.redis_url, settings.redis_password, name="harvest-async-watch")
    else:
        client = cluster_client(settings)
        events = ClusterKeyEvents(settings.redis_url, settings.redis_password, slots)
    try:
        yield Watcher(
            client,
            settings.keys,
            symbols=settings.symbols,
            kill_threshold=settings.theta.kill_threshold,
            url=settings.redis_url,
            password=settings.redis_password,
            group=settings.group,
            partitions=settings.partitions,
            events=events,
        )
    finally:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(*REDIS_ERRORS):
                await client.aclose()


async def run_watch(
    settings: Settings,
    *,
    once: bool = False,
    color: bool | None = None,
    out: TextIO = sys.stdout,
    sort: str = "symbol",
    filters: Sequence[str] = (),
) -> int:
    """What `harvest-async watch` runs."""
    keep = row_filter(filters) if filters else None
    async with watcher_for(settings) as watcher:
        title = describe_url(settings.redis_url)
        if isinstance(watcher.events, ClusterKeyEvents):
            title += " (Redis Cluster)"
        if once:
            await watcher.load()
            try:
                await watcher.check_publishers(scan=True)
            except RedisUnavailable as exc:
                watcher.model.status = str(exc)
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
                sort=sort,
                keep=keep,
            )
            out.write("\n".join(lines) + "\n")
            out.flush()
            return 0
        colored = use_color(out) if color is None else color
        with Terminal(out) as terminal:
            await live(watcher, terminal, color=colored, title=title, sort=sort, keep=keep)
        return 0
