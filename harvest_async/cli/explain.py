"""`harvest-async explain SYMBOL`: what the service would do with a symbol now, and why."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from harvest_async.cli.common import add_config_args, run_async, settings_from_args


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "explain",
        help="what the service would do with a symbol now, and why",
        description=(
            "Read the symbol's three input hashes, its proposal hash, the audit stream and "
            "the publishers' liveness keys, then apply the service's validation, kernel and "
            "publish rules with the settings of `run` (environment, --env-file, flags): the "
            "decision (publish, wait, nothing, retract), the rule that decides it, the "
            "kernel's reasoning and the next deadline. Reads only; exit 3 if Redis is "
            "unreachable."
        ),
    )
    p.add_argument("symbol", metavar="SYMBOL", help="e.g. BTCUSDT")
    add_config_args(p, logs=False, theta=True, decisions=True)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    import msgspec

    from harvest_async.clock import SystemClock
    from harvest_async.redis_io.client import check_redis, client_for
    from harvest_async.tools.explain import explain, read_snapshot, render_text

    settings = settings_from_args(args)
    symbol = args.symbol.strip()

    async def main() -> Any:
        await check_redis(settings)
        client = client_for(settings.redis_url, settings.redis_password, name="harvest-explain")
        try:
            snapshot = await read_snapshot(client, settings, symbol)
        finally:
            await client.aclose()
        return explain(settings, symbol, snapshot, SystemClock().now())

    result = run_async(main)
    if args.json:
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    else:
        print(render_text(result))
    return 0
