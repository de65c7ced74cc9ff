"""`harvest-async plot`: a timeline as a picture (optional extra: harvest-async[plot])."""

from __future__ import annotations

import argparse
from typing import Any

from harvest_async.cli.args import add_symbols_arg, add_theta_arg
from harvest_async.cli.exits import EXIT_USAGE, CliError


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "plot",
        help="draw a replay timeline per symbol (needs harvest-async[plot])",
        description=(
            "Per symbol: R_net with the T1/T2/T3 triggers, the proposed stop moves, the kill "
            "score with its threshold, and the action as colour bands (NONE green, PARTIAL "
            "yellow/orange, FULL_CLOSE red, no advice grey). TIMELINE is the output of "
            "`harvest-async replay` (JSON lines or CSV)."
        ),
    )
    p.add_argument("timeline", metavar="TIMELINE", help="replay output (.jsonl or .csv, .gz ok)")
    p.add_argument(
        "-o",
        "--out",
        metavar="FILE",
        help="picture to write: .png, .svg or .pdf (default: TIMELINE with .png)",
    )
    add_symbols_arg(p, "symbols to draw (default: all)")
    add_theta_arg(p, "tunables for the T1/T2/T3 and kill lines")
    p.add_argument("--title", help="a title above the plots")
    p.set_defaults(handler=handle)


def _default_out(timeline: str) -> str:
    name = timeline.removesuffix(".gz")
    for ext in (".jsonl", ".csv", ".json"):
        if name.endswith(ext):
            return name[: -len(ext)] + ".png"
    return name + ".png"


def handle(args: argparse.Namespace) -> int:
    from harvest_async.config import load_theta
    from harvest_async.errors import HarvestError
    from harvest_async.replay.plot import load_timeline, plot_timeline

    theta = None if args.theta is None else load_theta(args.theta, variable="--theta")
    symbols = None if args.symbols in (None, "*") else args.symbols.split(",")
    out = args.out or _default_out(args.timeline)
    try:
        series = load_timeline(args.timeline)
        drawn = plot_timeline(series, out, symbols=symbols, theta=theta, title=args.title)
    except HarvestError:
        raise  # no matplotlib, an unreadable timeline: cli.main reports them
    except ValueError as exc:  # symbols not in the timeline, an unknown picture format
        raise CliError(f"plot: {exc}", EXIT_USAGE) from exc
    print(f"plotted {len(drawn)} symbol(s) to {out}")
    return 0
