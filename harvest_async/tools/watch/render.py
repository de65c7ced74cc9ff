"""Drawing the `watch` table: columns fitted to the width, ANSI colours, the terminal."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from harvest_async.core.timefmt import age_text, clock_utc
from harvest_async.tools.watch.model import (
    ACTION_STYLE,
    EVENT_LINES,
    HIGHLIGHT_SEC,
    RESET,
    WatchModel,
    num_text,
    sl_text,
)

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
        f"mode={model.mode}  {clock_utc(now)} UTC"
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
            segments.append((f"  ({age_text(now - row.changed_at, compact=True)} ago)", "2"))
            lines.append(_line(segments, width, color))
            continue
        f = row.fields
        action = f.get("harvest_action", "?")
        try:
            kill_hot = float(f.get("kill_score", "")) >= model.kill_threshold
        except ValueError:
            kill_hot = False
        try:
            age = age_text(
                compact=True,
                seconds=now - float(f.get("ts_epoch") or f.get("last_update_epoch") or ""),
            )
        except ValueError:
            age = "?"
        cells = [
            (row.symbol, sym_style),
            (action, ACTION_STYLE.get(action, "")),
            (num_text(f.get("R_net"), "+.2f"), ""),
            (num_text(f.get("kill_score")), "1;31" if kill_hot else ""),
            (sl_text(f.get("new_sl_proposed")), ""),
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
                    [(clock_utc(at) + "  ", "2"), (text, ACTION_STYLE.get(kind, ""))],
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
