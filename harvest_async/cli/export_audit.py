"""`harvest-async export-audit`: the audit stream between two times as JSON lines."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from harvest_async.cli.common import add_config_args, run_async, settings_from_args


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "export-audit",
        help="write the audit stream between two times as JSON lines",
        description=(
            "Read the audit stream (STREAM_NAME) with XRANGE between --since and --until and "
            "write one JSON object per entry: its ID as `id`, then its fields. Archive an "
            "incident before MAXLEN trims it; `replay FILE --against-audit EXPORT` reads it "
            "back. TIME is a stream ID (1767225600000-0), epoch seconds or ISO-8601 (UTC "
            "unless it says otherwise). A name ending in .gz is compressed."
        ),
    )
    p.add_argument("--since", metavar="TIME", help="first entry (default: the stream's first)")
    p.add_argument("--until", metavar="TIME", help="last entry (default: the stream's last)")
    p.add_argument(
        "--out",
        "-o",
        metavar="FILE",
        help="write here (default: stdout); the file appears only when complete",
    )
    p.add_argument("--stream", metavar="NAME", help="the audit stream (default: STREAM_NAME)")
    add_config_args(p, service=False)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from harvest_async.redis_io.streams import history_client
    from harvest_async.replay.audit_export import export_audit
    from harvest_async.replay.stream_window import parse_bound

    settings = settings_from_args(args)
    since = None if args.since is None else parse_bound(args.since, option="--since")
    until = None if args.until is None else parse_bound(args.until, option="--until")
    stream = args.stream or settings.keys.stream

    async def main() -> Any:
        from harvest_async.redis_io.client import check_redis

        await check_redis(settings)
        client = history_client(
            settings.redis_url, settings.redis_password, name="harvest-async-export"
        )
        try:
            return await export_audit(
                client,
                stream,
                args.out,
                since=since,
                until=until,
                symbols=None if settings.symbols is None else frozenset(settings.symbols),
            )
        finally:
            await client.aclose()

    stats = run_async(main)
    for note in stats.notes:
        print(f"harvest-async: warning: {note}", file=sys.stderr)
    print(stats.summary(), file=sys.stderr)
    return 0
