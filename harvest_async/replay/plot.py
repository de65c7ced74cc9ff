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
    chosen = sorted(series) if symbols is None else [s for s in symbols if s in series]
    missing = [] if symbols is None else [s for s in symbols if s not in series]
    if missing:
        raise ValueError(f"not in the timeline: {', '.join(missing)}")
    if not chosen:
        raise ValueError("the timeline has no publish/retract entries to plot")
    theta = theta or Theta()
    plt = _matplotlib("matplotlib.pyplot")
    mdates = _matplotlib("matplotlib.dates")
    ticker = _matplotlib("matplotlib.ticker")
    line2d = _matplotlib("matplotlib.lines").Line2D
    patch = _matplotlib("matplotlib.patches").Patch

    start = min(series[s].times[0] for s in chosen)
    end = max(series[s].times[-1] for s in chosen)
    end = end + max(1.0, (end - start) * 0.02)
    n = len(chosen)
    cols = 1 if n <= 6 else 2
    rows = math.ceil(n / cols)
    width = 12.0 if cols == 1 else 18.0
    # a fixed layout (inches): constrained layout costs seconds with 40 axes
    panel, gap, top_in, bottom_in = 2.55, 0.8, 0.55 if title else 0.25, 0.75
    height = top_in + bottom_in + rows * panel + (rows - 1) * gap
    fig = plt.figure(figsize=(width, height))
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
    locator = mdates.AutoDateLocator(minticks=4, maxticks=9, tz=UTC)
    formatter = mdates.ConciseDateFormatter(locator, tz=UTC)
    triggers = ((theta.T1_R, "T1"), (theta.T2_R, "T2"), (theta.T3_R, "T3"))
    for index, symbol in enumerate(chosen):
        s = series[symbol]
        cell = outer[index // cols, index % cols].subgridspec(
            2, 1, height_ratios=(2.2, 1), hspace=0
        )
        ax_r = fig.add_subplot(cell[0])
        ax_k = fig.add_subplot(cell[1], sharex=ax_r)
        xs = _dates([*s.times, end])
        for action, spans in _bands(s.times, s.actions, end).items():
            colour = ACTION_COLOURS.get(action, "#ffffff")
            for ax in (ax_r, ax_k):
                ax.broken_barh(
                    [(mdates.date2num(_dates([a])[0]), w / 86400.0) for a, w in spans],
                    (0, 1),
                    transform=ax.get_xaxis_transform(),
                    facecolors=colour,
                    alpha=0.45,
                    linewidth=0,
                    zorder=0,
                )
        r_vals = [*s.r_net, s.r_net[-1]]
        ax_r.step(xs, r_vals, where="post", color="#1d4ed8", linewidth=1.4, zorder=3)
        finite = [v for v in s.r_net if math.isfinite(v)]
        top = max([theta.T3_R * 1.15, *finite]) if finite else theta.T3_R * 1.15
        bottom = min([-1.0, *finite]) if finite else -1.0
        top = min(top, theta.T3_R * 4)
        bottom = max(bottom, -theta.T3_R * 3)
        ax_r.set_ylim(bottom - 0.3, top + 0.3)
        for level, name in triggers:
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
        if any(math.isfinite(v) for v in s.new_sl):
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
        k_vals = [*s.kill, s.kill[-1]]
        ax_k.step(xs, k_vals, where="post", color="#111827", linewidth=1.2, zorder=3)
        ax_k.axhline(theta.kill_threshold, color="#dc2626", linestyle="--", linewidth=0.9, zorder=2)
        finite_k = [v for v in s.kill if math.isfinite(v)]
        k_low = min([0.45, *finite_k]) if finite_k else 0.45
        ax_k.set_ylim(k_low - 0.02, 1.0)
        ax_k.set_ylabel("kill", fontsize=8)
        ax_k.yaxis.set_major_locator(ticker.MaxNLocator(nbins=4, prune="upper"))
        ax_r.yaxis.set_major_locator(ticker.MaxNLocator(nbins=6, prune="lower"))
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
        ax_r.tick_params(axis="x", labelbottom=False)
        ax_k.xaxis.set_major_locator(locator)
        ax_k.xaxis.set_major_formatter(formatter)
    handles = [
        line2d([], [], color="#1d4ed8", label="R_net"),
        line2d([], [], color="#6b7280", linestyle="--", label="T1/T2/T3"),
        line2d([], [], color="#7c3aed", marker="v", label="proposed SL"),
        line2d([], [], color="#111827", label="kill score"),
        line2d([], [], color="#dc2626", linestyle="--", label="kill threshold"),
        *(patch(facecolor=c, alpha=0.6, label=_LABELS[a]) for a, c in ACTION_COLOURS.items()),
    ]
    fig.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 0.0),
        ncols=11 if cols > 1 else 6,
        fontsize=8,
        frameon=False,
    )
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.12 / height)
    metadata: dict[str, Any] = {"Software": None} if suffix == ".png" else {}
    if suffix == ".svg":
        metadata = {"Date": None}
        plt.rcParams["svg.hashsalt"] = "harvest-async"
    fig.savefig(out, dpi=110, metadata=metadata)
    plt.close(fig)
    return chosen
