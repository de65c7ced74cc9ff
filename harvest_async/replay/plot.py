"""`plot`: a timeline (replay output or audit stream entries) as a picture, per symbol.

Each symbol gets two stacked panels sharing the time axis:

* top: R_net as a step line with the ladder triggers T1/T2/T3, the proposed stop-loss
  moves as a step line on the right-hand (price) axis, and the action as colour bands
  behind (NONE green, PARTIAL_25/50/75 yellow to orange, FULL_CLOSE_PROPOSED red, no
  advice / retracted grey);
* bottom: the kill score with its threshold.

matplotlib is an optional extra (`pip install 'harvest-async[plot]'`) imported only when
a plot is drawn; without it `PlotUnavailable` says how to install it.
"""

from __future__ import annotations

import csv
import gzip
import importlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from harvest_async.core.models import Theta
from harvest_async.errors import PlotUnavailable, TimelineError

__all__ = ["ACTION_COLOURS", "PlotUnavailable", "SymbolSeries", "load_timeline", "plot_timeline"]

ACTION_COLOURS: dict[str, str] = {
    "NONE": "#a8dcb0",
    "PARTIAL_25": "#fde68a",
    "PARTIAL_50": "#fbbf24",
    "PARTIAL_75": "#f97316",
    "FULL_CLOSE_PROPOSED": "#dc2626",
    "RETRACTED": "#d4d4d4",
}
_LABELS = {
    "NONE": "NONE",
    "PARTIAL_25": "PARTIAL_25",
    "PARTIAL_50": "PARTIAL_50",
    "PARTIAL_75": "PARTIAL_75",
    "FULL_CLOSE_PROPOSED": "FULL_CLOSE",
    "RETRACTED": "no advice",
}
FORMATS = (".png", ".svg", ".pdf")


@dataclass(slots=True)
class SymbolSeries:
    symbol: str
    times: list[float] = field(default_factory=list)  # every publish/retract
    actions: list[str] = field(default_factory=list)  # action, or RETRACTED
    r_net: list[float] = field(default_factory=list)  # NaN while retracted
    kill: list[float] = field(default_factory=list)
    new_sl: list[float] = field(default_factory=list)  # NaN: no stop move proposed

    def add(self, row: dict[str, str], path: str, line: int) -> None:
        try:
            at = float(row["ts_epoch"])
            if row.get("event") == "retract":
                self.times.append(at)
                self.actions.append("RETRACTED")
                self.r_net.append(math.nan)
                self.kill.append(math.nan)
                self.new_sl.append(math.nan)
                return
            sl = row.get("new_sl_proposed", "None")
            self.times.append(at)
            self.actions.append(row["harvest_action"])
            self.r_net.append(float(row["R_net"]))
            self.kill.append(float(row["kill_score"]))
            self.new_sl.append(math.nan if sl in ("None", "") else float(sl))
        except (KeyError, ValueError) as exc:
            raise TimelineError(f"{path}:{line}: not a publish/retract entry ({exc})") from None


def _open_text(path: str) -> io.TextIOBase:
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return io.StringIO(raw.decode("utf-8"))


def load_timeline(path: str) -> dict[str, SymbolSeries]:
    """Publish/retract entries (JSON lines, or CSV when the name says .csv) per symbol."""
    try:
        text = _open_text(path)
    except OSError as exc:
        raise TimelineError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (EOFError, UnicodeDecodeError, gzip.BadGzipFile) as exc:
        raise TimelineError(f"{path}: cannot decode: {exc}") from None
    series: dict[str, SymbolSeries] = {}
    is_csv = path.removesuffix(".gz").endswith(".csv")
    rows: Any = enumerate(csv.DictReader(text), 2) if is_csv else _json_rows(text, path)
    for line, row in rows:
        symbol = row.get("symbol")
        if not symbol or row.get("event") not in ("publish", "retract"):
            continue
        entry = series.get(symbol)
        if entry is None:
            entry = series[symbol] = SymbolSeries(symbol)
        entry.add(row, path, line)
    return series


def _json_rows(text: io.TextIOBase, path: str) -> Any:
    decoder = msgspec.json.Decoder(dict[str, str])
    for line, raw in enumerate(text, 1):
        if not raw.strip():
            continue
        try:
            yield line, decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise TimelineError(f"{path}:{line}: {exc}") from None


def _matplotlib(name: str) -> Any:
    """A matplotlib module, imported only now (an optional extra; typed as Any so that
    type checks pass with or without it installed)."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError as exc:
        raise PlotUnavailable(
            "plotting needs matplotlib, an optional extra: pip install 'harvest-async[plot]'"
        ) from exc
    matplotlib.use("Agg")
    return importlib.import_module(name)


def _bands(times: Sequence[float], actions: Sequence[str], end: float) -> dict[str, list[Any]]:
    """Merged (start, width) spans per action."""
    spans: dict[str, list[Any]] = {}
    i = 0
    while i < len(times):
        j = i
        while j + 1 < len(times) and actions[j + 1] == actions[i]:
            j += 1
        start = times[i]
        stop = times[j + 1] if j + 1 < len(times) else end
        if stop > start:
            spans.setdefault(actions[i], []).append((start, stop - start))
        i = j + 1
    return spans


def _dates(values: Sequence[float]) -> list[datetime]:
    return [datetime.fromtimestamp(v, UTC) for v in values]


@dataclass(frozen=True, slots=True)
class _Mpl:
    """The matplotlib modules a drawing needs, imported together when drawing starts."""

    plt: Any
    mdates: Any
    ticker: Any
    line2d: Any
    patch: Any

    @classmethod
    def load(cls) -> _Mpl:
        return cls(
            plt=_matplotlib("matplotlib.pyplot"),
            mdates=_matplotlib("matplotlib.dates"),
            ticker=_matplotlib("matplotlib.ticker"),
            line2d=_matplotlib("matplotlib.lines").Line2D,
            patch=_matplotlib("matplotlib.patches").Patch,
        )


def _choose(series: dict[str, SymbolSeries], symbols: Sequence[str] | None) -> list[str]:
    """The symbols to draw, in the caller's order; refused before matplotlib is imported so
    that a bad selection is reported even without the extra installed."""
    chosen = sorted(series) if symbols is None else [s for s in symbols if s in series]
    missing = [] if symbols is None else [s for s in symbols if s not in series]
    if missing:
        raise ValueError(f"not in the timeline: {', '.join(missing)}")
    if not chosen:
        raise ValueError("the timeline has no publish/retract entries to plot")
    return chosen


def _figure(mpl: _Mpl, n: int, title: str | None) -> tuple[Any, Any, int, float]:
    """The figure and its grid of symbol cells: (figure, grid, columns, height in inches)."""
    cols = 1 if n <= 6 else 2
    rows = math.ceil(n / cols)
    width = 12.0 if cols == 1 else 18.0
    # a fixed layout (inches): constrained layout costs seconds with 40 axes
    panel, gap, top_in, bottom_in = 2.55, 0.8, 0.55 if title else 0.25, 0.75
    height = top_in + bottom_in + rows * panel + (rows - 1) * gap
    fig = mpl.plt.figure(figsize=(width, height))
    outer = fig.add_gridspec(
        rows,
        cols,
        left=0.7 / width,
        right=1 - 0.85 / width,
        top=1 - top_in / height,
        bottom=bottom_in / height,
        hspace=gap / panel,
        wspace=1.45 / ((width - 1.55 - 1.45 * (cols - 1)) / cols),
    )
    return fig, outer, cols, height


def _draw_bands(mpl: _Mpl, axes: Sequence[Any], s: SymbolSeries, end: float) -> None:
    """The action colour bands behind both panels, so a decision reads at a glance."""
    for action, spans in _bands(s.times, s.actions, end).items():
        colour = ACTION_COLOURS.get(action, "#ffffff")
        for ax in axes:
            ax.broken_barh(
                [(mpl.mdates.date2num(_dates([a])[0]), w / 86400.0) for a, w in spans],
                (0, 1),
                transform=ax.get_xaxis_transform(),
                facecolors=colour,
                alpha=0.45,
                linewidth=0,
                zorder=0,
            )


def _draw_r_panel(ax_r: Any, s: SymbolSeries, xs: list[datetime], theta: Theta) -> None:
    """R_net with the ladder triggers; the y range is clipped so that one outlier does not
    flatten the triggers into a line."""
    r_vals = [*s.r_net, s.r_net[-1]]
    ax_r.step(xs, r_vals, where="post", color="#1d4ed8", linewidth=1.4, zorder=3)
    finite = [v for v in s.r_net if math.isfinite(v)]
    top = max([theta.T3_R * 1.15, *finite]) if finite else theta.T3_R * 1.15
    bottom = min([-1.0, *finite]) if finite else -1.0
    top = min(top, theta.T3_R * 4)
    bottom = max(bottom, -theta.T3_R * 3)
    ax_r.set_ylim(bottom - 0.3, top + 0.3)
    for level, name in ((theta.T1_R, "T1"), (theta.T2_R, "T2"), (theta.T3_R, "T3")):
        ax_r.axhline(level, color="#6b7280", linestyle="--", linewidth=0.8, zorder=2)
        ax_r.text(
            0.004,
            level,
            f" {name} ",
            transform=ax_r.get_yaxis_transform(),
            fontsize=6.5,
            color="#374151",
            va="center",
            ha="left",
            bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "alpha": 0.7, "lw": 0},
            zorder=5,
        )
    ax_r.axhline(0.0, color="#9ca3af", linewidth=0.6, zorder=2)
    ax_r.set_ylabel("R_net", fontsize=8)


def _draw_sl_overlay(ax_r: Any, s: SymbolSeries, xs: list[datetime]) -> None:
    """The proposed stop-loss on its own (price) axis, a marker at each move; skipped when
    no stop move was ever proposed, so as not to draw an empty price axis."""
    if not any(math.isfinite(v) for v in s.new_sl):
        return
    ax_sl = ax_r.twinx()
    ax_sl.step(
        xs,
        [*s.new_sl, s.new_sl[-1]],
        where="post",
        color="#7c3aed",
        linewidth=1.1,
        zorder=4,
    )
    moves = [
        (t, v)
        for i, (t, v) in enumerate(zip(s.times, s.new_sl, strict=True))
        if math.isfinite(v) and (i == 0 or v != s.new_sl[i - 1])
    ]
    ax_sl.plot(
        _dates([t for t, _ in moves]),
        [v for _, v in moves],
        linestyle="none",
        marker="v",
        markersize=4,
        color="#7c3aed",
    )
    ax_sl.tick_params(axis="y", labelsize=7, colors="#7c3aed")
    ax_sl.set_ylabel("proposed SL", fontsize=7, color="#7c3aed")


def _draw_kill_panel(
    mpl: _Mpl, ax_k: Any, s: SymbolSeries, xs: list[datetime], theta: Theta
) -> None:
    """The kill score against its threshold; the axis tops out at 1 (the score's range)."""
    k_vals = [*s.kill, s.kill[-1]]
    ax_k.step(xs, k_vals, where="post", color="#111827", linewidth=1.2, zorder=3)
    ax_k.axhline(theta.kill_threshold, color="#dc2626", linestyle="--", linewidth=0.9, zorder=2)
    finite_k = [v for v in s.kill if math.isfinite(v)]
    k_low = min([0.45, *finite_k]) if finite_k else 0.45
    ax_k.set_ylim(k_low - 0.02, 1.0)
    ax_k.set_ylabel("kill", fontsize=8)
    ax_k.yaxis.set_major_locator(mpl.ticker.MaxNLocator(nbins=4, prune="upper"))


def _draw_symbol(
    mpl: _Mpl,
    fig: Any,
    cell: Any,
    symbol: str,
    s: SymbolSeries,
    *,
    span: tuple[float, float],
    theta: Theta,
    x_axis: tuple[Any, Any],
) -> None:
    """One symbol's cell: the R panel above the kill panel, sharing the time axis."""
    start, end = span
    ax_r = fig.add_subplot(cell[0])
    ax_k = fig.add_subplot(cell[1], sharex=ax_r)
    xs = _dates([*s.times, end])  # the last value is held to the end of the plot
    _draw_bands(mpl, (ax_r, ax_k), s, end)
    _draw_r_panel(ax_r, s, xs, theta)
    _draw_sl_overlay(ax_r, s, xs)
    _draw_kill_panel(mpl, ax_k, s, xs, theta)
    ax_r.yaxis.set_major_locator(mpl.ticker.MaxNLocator(nbins=6, prune="lower"))
    publishes = sum(1 for a in s.actions if a != "RETRACTED")
    ax_r.set_title(
        f"{symbol}  ({publishes} publishes, {len(s.actions) - publishes} retractions)",
        fontsize=9,
        loc="left",
    )
    for ax in (ax_r, ax_k):
        ax.tick_params(axis="both", labelsize=7)
        ax.grid(axis="x", color="#e5e7eb", linewidth=0.5)
        ax.set_xlim(_dates([start])[0], _dates([end])[0])
    # time labels only under the kill panel: the two panels read as one
    ax_r.tick_params(axis="x", labelbottom=False)
    locator, formatter = x_axis
    ax_k.xaxis.set_major_locator(locator)
    ax_k.xaxis.set_major_formatter(formatter)


def _legend(mpl: _Mpl, fig: Any, cols: int) -> None:
    """One legend for the whole figure (every cell uses the same styles)."""
    handles = [
        mpl.line2d([], [], color="#1d4ed8", label="R_net"),
        mpl.line2d([], [], color="#6b7280", linestyle="--", label="T1/T2/T3"),
        mpl.line2d([], [], color="#7c3aed", marker="v", label="proposed SL"),
        mpl.line2d([], [], color="#111827", label="kill score"),
        mpl.line2d([], [], color="#dc2626", linestyle="--", label="kill threshold"),
        *(mpl.patch(facecolor=c, alpha=0.6, label=_LABELS[a]) for a, c in ACTION_COLOURS.items()),
    ]
    fig.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 0.0),
        ncols=11 if cols > 1 else 6,
        fontsize=8,
        frameon=False,
    )


def _save(mpl: _Mpl, fig: Any, out: str, suffix: str) -> None:
    """Write the file without dates, versions or random ids, so that the same timeline
    gives the same bytes."""
    metadata: dict[str, Any] = {"Software": None} if suffix == ".png" else {}
    if suffix == ".svg":
        metadata = {"Date": None}
        mpl.plt.rcParams["svg.hashsalt"] = "harvest-async"
    fig.savefig(out, dpi=110, metadata=metadata)
    mpl.plt.close(fig)


def plot_timeline(
    series: dict[str, SymbolSeries],
    out: str,
    *,
    symbols: Sequence[str] | None = None,
    theta: Theta | None = None,
    title: str | None = None,
) -> list[str]:
    """Draw the chosen symbols (default: all, sorted) to `out` (.png, .svg or .pdf).
    Returns the symbols drawn."""
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"output must end in {', '.join(FORMATS)}, got {out!r}")
    chosen = _choose(series, symbols)
    theta = theta or Theta()
    mpl = _Mpl.load()
    start = min(series[s].times[0] for s in chosen)
    end = max(series[s].times[-1] for s in chosen)
    end = end + max(1.0, (end - start) * 0.02)  # room after the last entry
    fig, outer, cols, height = _figure(mpl, len(chosen), title)
    locator = mpl.mdates.AutoDateLocator(minticks=4, maxticks=9, tz=UTC)
    x_axis = (locator, mpl.mdates.ConciseDateFormatter(locator, tz=UTC))
    for index, symbol in enumerate(chosen):
        cell = outer[index // cols, index % cols].subgridspec(
            2, 1, height_ratios=(2.2, 1), hspace=0
        )
        _draw_symbol(
            mpl, fig, cell, symbol, series[symbol], span=(start, end), theta=theta, x_axis=x_axis
        )
    _legend(mpl, fig, cols)
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.12 / height)
    _save(mpl, fig, out, suffix)
    return chosen
