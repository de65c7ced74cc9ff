"""`harvest-async run`: the service."""

from __future__ import annotations

import argparse
from typing import Any

from harvest_async.cli.common import add_config_args, run_async, settings_from_args


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run the proposal publisher service",
        description="React to input changes in Redis and publish harvest proposals.",
    )
    add_config_args(p, theta=True, decisions=True, service=True)
    p.add_argument("--once", action="store_true", help="one full pass, publish, exit")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from harvest_async.service.app import serve

    settings = settings_from_args(args)

    async def main() -> int:
        return await serve(settings, once=args.once)

    return run_async(main)
