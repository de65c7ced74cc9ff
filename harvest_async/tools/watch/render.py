"""Drawing the `watch` table: columns fitted to the width, ANSI colours, the terminal."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from harvest_async.core.partition import partition_of
from harvest_async.core.timefmt import age_text, clock_utc
from harvest_async.tools.watch.model import (
    ACTION_STYLE,
    EVENT_LINES,
    HIGHLIGHT_SEC,
    RESET,
    Row,
    WatchModel,
    num_text,
    number,
    sl_text,
    sort_key,
)

Segment = tuple[str, str]  # (text, SGR style or "")

# (name, width), in display order; at a narrow width the least useful go first
_COLUMNS = (
    ("SYMBOL", 12),
    ("ACTION", 19),
    ("R_NET", 7),
    ("KILL", 5),
    ("NEW_SL", 10),
    ("AGE", 6),  # since the proposal was written ("exp": past its valid_until)
    ("MKT", 5),  # the market state's age now
    ("POS", 5),  # the position snapshot's age now
    ("TRIGGER", 9),
    ("SIDE", 5),
)
_DROP_ORDER = ("SIDE", "TRIGGER", "POS", "MKT", "NEW_SL")
_RIGHT = frozenset({"R_NET", "KILL", "NEW_SL", "AGE", "MKT", "POS"})
_DIM = "2"  # rows that are not live advice


def columns_for(width: int, *, owner: bool = False) -> list[tuple[str, int]]:
    """The columns that fit `width` (SYMBOL, ACTION, R_NET, KILL and AGE always stay);
    `owner`: a publisher group's OWNER column (the member owning the row's symbol)."""
    cols = list(_COLUMNS)
    if owner:
        cols.insert(1, ("OWNER", 10))
    for name in ("OWNER", *_DROP_ORDER) if owner else _DROP_ORDER:
        if sum(w for _n, w in cols) + len(cols) - 1 <= width:
            break
        cols = [c for c in cols if c[0] != name]
    return cols


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


def _wrapped(text: str, style: str, width: int, color: bool) -> list[str]:
    """A message on as many lines as it needs: never cut."""
    lines = textwrap.wrap(text, max(width, 20)) or [""]
    return [_line([(line, style)], width, color) for line in lines]


def _cells(values: dict[str, Segment], cols: Sequence[tuple[str, int]]) -> list[Segment]:
    segs: list[Segment] = []
    for name, w in cols:
        text, style = values.get(name, ("", ""))
        segs.append((text.rjust(w) if name in _RIGHT else text.ljust(w), style))
        segs.append((" ", ""))
    return segs


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else age_text(seconds, compact=True)


def _published_cells(row: Row, model: WatchModel, now: float, live: bool) -> dict[str, Segment]:
    f = row.fields
    assert f is not None
    action = row.action
    dim = not live
    kill = number(f.get("kill_score"))
    kill_hot = kill is not None and kill >= model.kill_threshold
    at = row.published_at()
    expired = row.expired(now)
    plain = _DIM if dim else ""
    return {
        "ACTION": (action, _DIM if dim else ACTION_STYLE.get(action, "")),
        "R_NET": (num_text(f.get("R_net"), "+.2f"), plain),
        "KILL": (num_text(f.get("kill_score")), "1;31" if kill_hot and not dim else plain),
        "NEW_SL": (sl_text(f.get("new_sl_proposed")), plain),
        "AGE": ("exp", "1;31") if expired else (_age(None if at is None else now - at), plain),
        "MKT": (_age(row.input_age("marketstate_age_sec", now)), plain),
        "POS": (_age(row.input_age("position_snapshot_age_sec", now)), plain),
        "TRIGGER": (f.get("trigger", "?"), plain),
        "SIDE": (f.get("position_side", "?"), plain),
    }


def _header(model: WatchModel, rows: Sequence[Row], shown: int, now: float) -> str:
    published = sum(1 for r in rows if r.fields is not None)
    return (
        f"harvest-async watch  {published} proposals, {len(rows) - published} retracted"
        + (f" (showing {shown})" if shown != len(rows) else "")
        + f"  mode={model.mode}  {clock_utc(now)} UTC"
    )


def _where_line(model: WatchModel, now: float, title: str) -> str:
    """The server, the publishers' liveness and why the mode is what it is."""
    if model.redis_down_since is not None:
        publisher = "publisher: unknown while Redis is unreachable"
    elif model.publishers is None:
        publisher = "publisher: (not read yet)"
    elif not model.publishers:
        publisher = "publisher: none alive"
    else:
        parts = []
        for p in model.publishers:
            age = p.beat_age(now)
            parts.append(p.instance + ("" if age is None else f" (beat {_age(age)} ago)"))
        publisher = "publisher: " + ", ".join(parts)
    parts = [title] if title else []
    parts.append(publisher)
    if model.owners is not None:
        # a publisher group: partitions per member (and how many have no owner)
        counts = Counter(model.owners.values())
        spread = ", ".join(f"{m} {n}" for m, n in sorted(counts.items(), key=str) if m)
        none = counts.get(None, 0)
        parts.append(
            f"partitions of {len(model.owners)}: {spread or '-'}"
            + (f", {none} WITHOUT OWNER" if none else "")
        )
    if model.mode_detail:
        parts.append(model.mode_detail)
    return "  ".join(parts)


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
    sort: str = "symbol",
    keep: Callable[[Row], bool] | None = None,
) -> list[str]:
    """The screen as lines (each at most `width` visible characters)."""
    every = list(model.rows.values())
    rows = sorted((r for r in every if keep is None or keep(r)), key=sort_key(sort, now))
    lines = [_line([(_header(model, every, len(rows), now), "1")], width, color)]
    lines.extend(_wrapped(_where_line(model, now, title), "2", width, color))
    for text, style in model.banners(now):
        lines.extend(_wrapped(text, style, width, color))
    cols = columns_for(width, owner=model.owners is not None)
    lines.append(_line(_cells({n: (n, "4") for n, _ in cols}, cols), width, color))
    events = list(model.events)[-EVENT_LINES:] if live else []
    room = height - len(lines) - (len(events) + 2 if events else 0) - (1 if footer else 0)
    if not live:
        room = len(rows)
    shown = rows[: max(room - 1, 0)] if len(rows) > room else rows
    advice = model.live()
    for row in shown:
        fresh = now - row.changed_at < HIGHLIGHT_SEC and live
        row_live = advice and row.symbol not in model.stale
        sym_style = "1;7" if fresh else "" if row_live else _DIM
        if row.fields is None:
            # the reason spans the number columns: it is what matters on this row
            segments = _cells(
                {
                    "SYMBOL": (row.symbol, sym_style),
                    "ACTION": ("RETRACTED", ACTION_STYLE["RETRACTED"]),
                },
                cols[:2],
            )
            segments.append((row.reason or "(reason not in the stream)", ACTION_STYLE["RETRACTED"]))
            segments.append((f"  ({age_text(now - row.changed_at, compact=True)} ago)", "2"))
            lines.append(_line(segments, width, color))
            continue
        cells = _published_cells(row, model, now, row_live)
        cells["SYMBOL"] = (row.symbol, sym_style)
        if model.owners is not None:
            owner = model.owners.get(partition_of(row.symbol, model.partitions))
            cells["OWNER"] = (owner or "(none)", "" if owner else "1;31")
        lines.append(_line(_cells(cells, cols), width, color))
    if len(shown) < len(rows):
        lines.append(_line([(f"... and {len(rows) - len(shown)} more symbols", "2")], width, color))
    if not rows:
        empty = "(no proposals yet)" if not every else "(no proposal matches --filter)"
        lines.append(_line([(empty, "2")], width, color))
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
