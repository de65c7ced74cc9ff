"""`harvest-async watch`: a live terminal table of every symbol's current proposal.

The table is read from Redis (the proposal hashes are the truth) and updated by keyspace
notifications on the proposal keys: a notification marks the symbol dirty, dirty symbols are
re-read in one pipeline, and a hash that is gone is shown as RETRACTED with the reason taken
from the audit stream's `retract` entry. Without notifications (`notify-keyspace-events`
lacking K/h/g) it re-reads everything every second and says so in the header.

Plain ANSI escape codes (alternate screen, cursor home, erase line): works over ssh and in
tmux without curses. Ctrl-C, SIGTERM or `q` exit cleanly and restore the terminal.
`--once` prints one snapshot (no escape codes unless colour is asked for) for scripts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import anyio
import redis.asyncio as aioredis

from harvest_async.clock import Clock, SystemClock
from harvest_async.config import Settings
from harvest_async.core.keys import Keys, glob_escape
from harvest_async.errors import RedisUnavailable
from harvest_async.redis_io.client import REDIS_ERRORS, client_for, describe_url, scan_symbols
from harvest_async.redis_io.notifications import notify_flags_cover, read_notify_flags

__all__ = ["Terminal", "WatchModel", "Watcher", "render", "run_watch", "use_color"]

# SGR colour codes per action: NONE dim, the partials green -> yellow, full close red
ACTION_STYLE = {
    "NONE": "2",
    "PARTIAL_25": "32",
    "PARTIAL_50": "33",
    "PARTIAL_75": "1;33",
    "FULL_CLOSE_PROPOSED": "1;31",
    "RETRACTED": "35",
}
RESET = "\x1b[0m"
KEEP_RETRACTED_SEC = 300.0  # retracted rows stay this long unless the symbol comes back
HIGHLIGHT_SEC = 1.5  # a changed row's symbol is bold this long
EVENT_LINES = 8
POLL_SEC = 1.0
_WATCH_ERRORS: tuple[type[BaseException], ...] = (RedisUnavailable, *REDIS_ERRORS)


def use_color(stream: TextIO, mode: str = "auto") -> bool:
    if mode == "always":
        return True
    if mode == "never" or os.environ.get("NO_COLOR"):
        return False
    return stream.isatty() and os.environ.get("TERM", "") != "dumb"


@dataclass(slots=True)
class Row:
    symbol: str
    fields: dict[str, str] | None  # None: retracted
    reason: str = ""
    changed_at: float = 0.0  # epoch seconds of the last change seen


@dataclass(slots=True)
class WatchModel:
    kill_threshold: float = 0.6
    rows: dict[str, Row] = field(default_factory=dict)
    events: deque[tuple[float, str, str]] = field(default_factory=lambda: deque(maxlen=200))
    mode: str = "starting"
    status: str = ""
    publishes: int = 0
    retractions: int = 0

    def apply(self, symbol: str, fields: dict[str, str], now: float) -> bool:
        """A hash as just read; returns True if something changed."""
        row = self.rows.get(symbol)
        if fields:
            if row is not None and row.fields == fields:
                return False
            self.rows[symbol] = Row(symbol, fields, "", now)
            self.publishes += 1
            action = fields.get("harvest_action", "?")
            self.events.append(
                (
                    now,
                    action,
                    f"{symbol:<12} {action:<19} {fields.get('trigger', '?'):<9} "
                    f"R={_num(fields.get('R_net'), '+.2f')} K={_num(fields.get('kill_score'))} "
                    f"SL={_sl(fields.get('new_sl_proposed'))}",
                )
            )
            return True
        if row is None or row.fields is None:
            return False
        self.retract(symbol, "", now)
        return True

    def retract(self, symbol: str, reason: str, now: float, *, event: bool = True) -> None:
        row = self.rows.get(symbol)
        if row is not None and row.fields is None:
            if reason and not row.reason:
                row.reason = reason
                self._update_event(symbol, reason)
            return
        self.rows[symbol] = Row(symbol, None, reason, now)
        if event:
            self.retractions += 1
            self.events.append((now, "RETRACTED", self._retract_text(symbol, reason)))

    def _retract_text(self, symbol: str, reason: str) -> str:
        return f"{symbol:<12} {'RETRACTED':<19} {reason or '(reason not in the stream)'}"

    def _update_event(self, symbol: str, reason: str) -> None:
        for i in range(len(self.events) - 1, -1, -1):
            at, kind, text = self.events[i]
            if kind == "RETRACTED" and text.startswith(f"{symbol:<12} "):
                self.events[i] = (at, kind, self._retract_text(symbol, reason))
                return

    def prune(self, now: float) -> None:
        for symbol in [
            s
            for s, r in self.rows.items()
            if r.fields is None and now - r.changed_at > KEEP_RETRACTED_SEC
        ]:
            del self.rows[symbol]


def _num(raw: str | None, fmt: str = ".3f") -> str:
    try:
        return format(float(raw or ""), fmt)
    except ValueError:
        return "-"


def _sl(raw: str | None) -> str:
    if raw in (None, "", "None"):
        return "-"
    try:
        return f"{float(raw):.8g}"
    except ValueError:
        return "?"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{seconds / 3600:.1f}h"


def _clock_text(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S")


# -- rendering -------------------------------------------------------------------------------
Segment = tuple[str, str]  # (text, SGR style or "")

_COLUMNS = (
    ("SYMBOL", 12),
    ("ACTION", 19),
    ("R_NET", 7),
    ("KILL", 6),
    ("NEW_SL", 12),
    ("TRIGGER", 9),
    ("SIDE", 5),
    ("AGE", 7),
)


def _line(segments: Sequence[Segment], width: int, color: bool) -> str:
    out: list[str] = []
    left = width
    for text, style in segments:
        if left <= 0:
            break
        piece = text[:left]
        left -= len(piece)
        out.append(f"\x1b[{style}m{piece}{RESET}" if color and style and piece else piece)
    return "".join(out).rstrip() if not color else "".join(out)


def _cells(values: Sequence[tuple[str, str]]) -> list[Segment]:
    segs: list[Segment] = []
    for (text, style), (_name, w) in zip(values, _COLUMNS, strict=False):
        right = _name in ("R_NET", "KILL", "NEW_SL", "AGE")
        cell = text.rjust(w) if right else text.ljust(w)
        segs.append((cell, style))
        segs.append((" ", ""))
    for text, style in values[len(_COLUMNS) :]:
        segs.append((text, style))
    return segs


def render(
    model: WatchModel,
    now: float,
    *,
    width: int = 100,
    height: int = 40,
    color: bool = False,
    title: str = "",
    footer: str = "",
    live: bool = True,
) -> list[str]:
    """The screen as lines (each at most `width` visible characters)."""
    rows = sorted(model.rows.values(), key=lambda r: r.symbol)
    published = sum(1 for r in rows if r.fields is not None)
    retracted = len(rows) - published
    head = (
        f"harvest-async watch  {published} proposals, {retracted} retracted  "
        f"mode={model.mode}  {_clock_text(now)} UTC"
    )
    if model.status:
        head += f"  [{model.status}]"
    if title:
        head += f"  {title}"
    lines = [_line([(head, "1")], width, color)]
    lines.append(_line(_cells([(n, "4") for n, _ in _COLUMNS]), width, color))
    events = list(model.events)[-EVENT_LINES:] if live else []
    room = height - len(lines) - (len(events) + 2 if events else 0) - (1 if footer else 0)
    if not live:
        room = len(rows)
    shown = rows[: max(room - 1, 0)] if len(rows) > room else rows
    for row in shown:
        fresh = now - row.changed_at < HIGHLIGHT_SEC and live
        sym_style = "1;7" if fresh else ""
        if row.fields is None:
            # the reason spans the number columns: it is what matters on this row
            segments = _cells([(row.symbol, sym_style), ("RETRACTED", ACTION_STYLE["RETRACTED"])])
            segments.append((row.reason or "(reason not in the stream)", ACTION_STYLE["RETRACTED"]))
            segments.append((f"  ({_age(now - row.changed_at)} ago)", "2"))
            lines.append(_line(segments, width, color))
            continue
        f = row.fields
        action = f.get("harvest_action", "?")
        try:
            kill_hot = float(f.get("kill_score", "")) >= model.kill_threshold
        except ValueError:
            kill_hot = False
        try:
            age = _age(now - float(f.get("ts_epoch") or f.get("last_update_epoch") or ""))
        except ValueError:
            age = "?"
        cells = [
            (row.symbol, sym_style),
            (action, ACTION_STYLE.get(action, "")),
            (_num(f.get("R_net"), "+.2f"), ""),
            (_num(f.get("kill_score")), "1;31" if kill_hot else ""),
            (_sl(f.get("new_sl_proposed")), ""),
            (f.get("trigger", "?"), ""),
            (f.get("position_side", "?"), ""),
            (age, ""),
        ]
        lines.append(_line(_cells(cells), width, color))
    if len(shown) < len(rows):
        lines.append(_line([(f"... and {len(rows) - len(shown)} more symbols", "2")], width, color))
    if not rows:
        lines.append(_line([("(no proposals yet)", "2")], width, color))
    if events:
        lines.append("")
        lines.append(_line([("recent changes", "4")], width, color))
        for at, kind, text in events:
            lines.append(
                _line(
                    [(_clock_text(at) + "  ", "2"), (text, ACTION_STYLE.get(kind, ""))],
                    width,
                    color,
                )
            )
    if footer:
        lines.append(_line([(footer, "2")], width, color))
    return lines


# -- terminal --------------------------------------------------------------------------------
class Terminal:
    """Alternate screen, hidden cursor, no echo; everything restored on exit."""

    def __init__(self, out: TextIO = sys.stdout, inp: TextIO | None = sys.stdin) -> None:
        self.out = out
        self.in_fd: int | None = None
        if inp is not None:
            with contextlib.suppress(AttributeError, OSError, ValueError):
                if inp.isatty():
                    self.in_fd = inp.fileno()
        self._saved: Any = None

    def __enter__(self) -> Terminal:
        if self.in_fd is not None:
            import termios  # noqa: PLC0415 - POSIX only, used only with a terminal

            try:
                self._saved = termios.tcgetattr(self.in_fd)
                mode = termios.tcgetattr(self.in_fd)
                mode[3] &= ~(termios.ECHO | termios.ICANON)  # keep ISIG: Ctrl-C still works
                mode[6][termios.VMIN] = 1
                mode[6][termios.VTIME] = 0
                termios.tcsetattr(self.in_fd, termios.TCSANOW, mode)
            except termios.error:
                self._saved = None
        self.out.write("\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J")
        self.out.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        self.out.write(RESET + "\x1b[?25h\x1b[?1049l")
        self.out.flush()
        if self._saved is not None and self.in_fd is not None:
            import termios  # noqa: PLC0415

            with contextlib.suppress(termios.error):
                termios.tcsetattr(self.in_fd, termios.TCSADRAIN, self._saved)

    def size(self) -> tuple[int, int]:
        # the terminal itself, not $COLUMNS/$LINES: those go stale when the window is resized
        try:
            size = os.get_terminal_size(self.out.fileno())
        except (AttributeError, OSError, ValueError):
            size = shutil.get_terminal_size((100, 30))
        return size.columns, size.lines

    def draw(self, lines: Sequence[str]) -> None:
        _width, height = self.size()
        body = "\x1b[K\r\n".join(lines[:height])
        self.out.write("\x1b[H" + body + "\x1b[K\x1b[J")
        self.out.flush()


# -- Redis side ------------------------------------------------------------------------------
class Watcher:
    """Keeps a WatchModel in step with the proposal hashes in Redis."""

    def __init__(
        self,
        client: aioredis.Redis,
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

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

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
            tg.start_soon(stop_on_signal)
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
