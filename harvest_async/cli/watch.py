"""`harvest-async watch`: live table of the current proposals (or `--once` a snapshot)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from harvest_async.cli.common import add_config_args, run_async, settings_from_args
from harvest_async.cli.exits import EXIT_USAGE, CliError

SORTS = ("symbol", "action", "kill", "r", "age")  # tools.watch.model.SORTS


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "watch",
        help="live table of every symbol's current proposal",
        description=(
            "A live terminal table of every symbol's proposal (action, R_net, kill score, "
            "proposed SL, age, the inputs' ages MKT and POS, trigger, side), updated by "
            "keyspace notifications (re-read every second when they are off); retractions "
            "are shown with their reason as they happen. A banner says when the rows are not "
            "live advice: no live publisher, Redis unreachable, a proposal past its "
            "valid_until. q or Ctrl-C quits. --once prints one snapshot and exits (for scripts)."
        ),
    )
    add_config_args(p, logs=False)
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument(
        "--sort",
        choices=SORTS,
        default="symbol",
        help="row order: symbol (default); action (a full close first); kill, r (highest "
        "first); age (oldest proposal first). Retracted rows come last",
    )
    p.add_argument(
        "--filter",
        metavar="GLOB,...",
        help="show only rows whose symbol or action matches one of these globs "
        "(case-insensitive), e.g. 'BTC*', 'FULL_CLOSE*,RETRACTED'",
    )
    p.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the actions (default: auto = when stdout is a terminal and NO_COLOR is unset)",
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from harvest_async.tools.watch import run_watch, use_color

    if not args.once and not sys.stdout.isatty():
        raise CliError(
            "watch: the live view needs a terminal (stdout is not one); use --once for a snapshot",
            EXIT_USAGE,
        )
    settings = settings_from_args(args)
    color = use_color(sys.stdout, args.color)

    filters = [] if args.filter is None else args.filter.split(",")

    async def main() -> int:
        return await run_watch(
            settings, once=args.once, color=color, sort=args.sort, filters=filters
        )

    return run_async(main)
