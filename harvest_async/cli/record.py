"""`harvest-async record`: capture the inputs and every change to them into a recording."""

from __future__ import annotations

import argparse
from typing import Any

from harvest_async.cli.args import positive_float
from harvest_async.cli.common import add_config_args, run_async, settings_from_args
from harvest_async.cli.exits import EXIT_USAGE, CliError


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "record",
        help="capture input changes from Redis into a recording",
        description=(
            "Snapshot the input hashes (market state, risk proposals, positions), then record "
            "every change seen through keyspace notifications (and INPUT_STREAMS) until "
            "--duration ends or SIGINT/SIGTERM. A name ending in .gz is compressed. Prints a "
            "one-line summary. The format is described in docs/recording.md."
        ),
    )
    p.add_argument("--out", "-o", required=True, metavar="FILE", help="recording to write")
    p.add_argument(
        "--duration",
        type=positive_float,
        metavar="S",
        help="stop after S seconds (default: on SIGINT)",
    )
    add_config_args(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harvest_async.replay.recorder import record

    settings = settings_from_args(args)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise CliError(f"record: no such directory {str(out.parent)!r}", EXIT_USAGE)

    async def main() -> Any:
        return await record(settings, args.out, duration=args.duration)

    stats = run_async(main)
    print(stats.summary())
    return 0
