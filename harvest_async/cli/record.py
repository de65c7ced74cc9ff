"""`harvest-async record`: capture the inputs and every change to them into a recording."""

from __future__ import annotations

import argparse
from typing import Any

from harvest_async.cli.args import non_negative_float, positive_float
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
    _add_from_streams_args(p)
    p.set_defaults(handler=handle)


def _add_from_streams_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "from stream history (docs/recording.md, 'From stream history')",
        "Build the recording from what the input streams already hold (XRANGE), instead "
        "of watching Redis live. TIME is a stream ID (1767225600000-0), epoch seconds or "
        "ISO-8601 (UTC unless it says otherwise).",
    )
    g.add_argument(
        "--from-streams",
        action="append",
        metavar="STREAM=KIND,...",
        help="comma list of input streams, each with its kind (marketstate, risk, position); "
        "may be repeated",
    )
    g.add_argument(
        "--since",
        metavar="TIME",
        help="the recording starts here (default: the "
        "streams' first entry); earlier entries make its initial state",
    )
    g.add_argument("--until", metavar="TIME", help="the recording ends here (default: now)")
    g.add_argument(
        "--snapshot-from",
        metavar="REDIS_URL",
        help="read the current input hashes there: they complete change signals (entries "
        "with a symbol only) and the keys no entry touched (a window that ends now)",
    )
    g.add_argument(
        "--warmup",
        type=non_negative_float,
        metavar="S",
        help="read entries from S seconds before --since for the initial state (default: "
        "from each stream's beginning)",
    )


def handle(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harvest_async.replay.recorder import record

    settings = settings_from_args(args)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise CliError(f"record: no such directory {str(out.parent)!r}", EXIT_USAGE)
    if args.from_streams is not None:
        return _from_streams(args, settings)
    stray = [f"--{n.replace('_', '-')}" for n in _HISTORY_ONLY if getattr(args, n) is not None]
    if stray:
        raise CliError(f"record: {', '.join(stray)} need --from-streams", EXIT_USAGE)

    async def main() -> Any:
        return await record(settings, args.out, duration=args.duration)

    stats = run_async(main)
    print(stats.summary())
    return 0


_HISTORY_ONLY = ("since", "until", "snapshot_from", "warmup")


def _from_streams(args: argparse.Namespace, settings: Any) -> int:
    import sys

    from harvest_async.replay.from_streams import parse_stream_specs
    from harvest_async.replay.from_streams_record import record_from_streams
    from harvest_async.replay.stream_window import parse_bound

    if args.duration is not None:
        raise CliError("record: --duration is for live recording, not --from-streams", EXIT_USAGE)
    specs = parse_stream_specs(args.from_streams)
    since = None if args.since is None else parse_bound(args.since, option="--since")
    until = None if args.until is None else parse_bound(args.until, option="--until")

    async def main() -> Any:
        return await record_from_streams(
            settings,
            args.out,
            specs,
            since=since,
            until=until,
            warmup=args.warmup,
            snapshot_from=args.snapshot_from,
        )

    stats = run_async(main)
    for warning in stats.warnings():
        print(f"harvest-async: warning: {warning}", file=sys.stderr)
    print(stats.summary())
    return 0
