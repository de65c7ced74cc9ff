"""`harvest-async` command line: argparse subcommands, the only module that wires things.

Layout, so that subcommands can be added and edited independently:

* one module per subcommand under `harvest_async/cli` (listed in `cli.commands.COMMANDS`);
  `build_parser()` calls each module's `register(subparsers)`, which adds its arguments and
  `handler=handle` via `set_defaults`;
* each handler takes the parsed `argparse.Namespace`, imports its implementation module
  lazily (so `compute` never imports redis or anyio) and returns the exit status.

Exit codes (README.md, "Using it"): 0 ok, 2 bad configuration or arguments, 3 Redis unreachable,
1 anything else. Every non-zero exit prints one line on stderr, `harvest-async: ...`;
a handler signals such an exit by raising `CliError(message, code)`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from harvest_async import __version__
from harvest_async.cli.exits import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_REDIS,
    EXIT_USAGE,
    CliError,
    describe,
    exit_code_for,
    project_error,
)
from harvest_async.errors import HarvestError

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_REDIS", "EXIT_USAGE", "CliError", "build_parser", "main"]

PROG = "harvest-async"

Handler = Callable[[argparse.Namespace], int]


def _fail(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


# --- the other subcommands: one module each under harvest_async/cli ------------


def _command_registrations() -> list[Callable[[Any], None]]:
    from harvest_async.cli.commands import COMMANDS

    return [
        importlib.import_module(f"harvest_async.cli.{name}").register
        for name in COMMANDS
        if importlib.util.find_spec(f"harvest_async.cli.{name}") is not None
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Event-driven profit-harvest proposals from Redis inputs (proposes only).",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _command_registrations():
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (argparse exits 2 on bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_usage(sys.stderr)
        _fail("a command is required (see --help)")
        return EXIT_USAGE
    try:
        return handler(args)
    except CliError as exc:
        _fail(exc.message)
        return exc.code
    except (HarvestError, BaseExceptionGroup) as exc:
        error = project_error(exc)
        code = None if error is None else exit_code_for(error)
        if error is None or code is None:
            raise
        _fail(describe(error))
        return code
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, without a second error at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        _fail("output closed early (broken pipe)")
        return EXIT_ERROR
