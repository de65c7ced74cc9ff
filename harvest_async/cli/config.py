"""`harvest-async config`: the effective settings and where each came from."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from harvest_async.cli.common import FLAG_VARS, add_config_args


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "config",
        help="the effective settings, each with where it came from",
        description=(
            "Print the settings `run` would use with the same environment, env file and "
            "flags, each with its source: default, env file, environment or flag. Secrets "
            "are masked. Invalid settings end with exit 2 and the variable named, as for `run`. "
            "Variables of the env file that no setting reads are listed at the end."
        ),
    )
    add_config_args(p, theta=True, decisions=True, service=True)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    import os

    import msgspec

    from harvest_async.config import load_env_file
    from harvest_async.tools.effective_config import Layers, effective_config, render_text

    flags = {
        var: ("--" + name.replace("_", "-"), str(getattr(args, name)))
        for name, var in FLAG_VARS.items()
        if getattr(args, name, None) is not None
    }
    layers = Layers(
        env_file=args.env_file,
        file_vars=load_env_file(args.env_file) if args.env_file else {},
        environ=dict(os.environ),
        flags=flags,
    )
    config = effective_config(layers)
    if args.json:
        sys.stdout.write(msgspec.json.encode(config).decode() + "\n")
    else:
        print(render_text(config))
    return 0
