"""`harvest-async simulate`: synthetic inputs (prices, regimes, positions) into Redis."""

from __future__ import annotations

import argparse
from typing import Any

from harvest_async.cli.args import positive_float, positive_int, symbol_list
from harvest_async.cli.common import run_async, settings_from_args


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="write synthetic inputs (prices, regimes, positions) into Redis",
        description=(
            "A synthetic input producer: random-walk prices, regime shifts, risk proposals "
            "and positions opening and closing, written as the three input hashes the way "
            "the real producers do (HSET with TTLs, FLAT hash or DEL on close). Honours the "
            "key prefixes (MARKETSTATE_PREFIX, ...) of the environment or --env-file."
        ),
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--symbol-count",
        type=positive_int,
        metavar="N",
        help="simulate N symbols (BTCUSDT, ETHUSDT, ...); default: SYMBOLS if it is a "
        "list, else 10",
    )
    which.add_argument(
        "--symbols",
        "--symbol-list",
        dest="symbols",
        type=symbol_list,
        metavar="A,B,...",
        help="simulate these symbols (overrides SYMBOLS)",
    )
    p.add_argument(
        "--rate",
        type=positive_float,
        default=100.0,
        metavar="EVENTS_PER_S",
        help="input changes per second (default 100)",
    )
    p.add_argument(
        "--duration",
        type=positive_float,
        default=None,
        metavar="S",
        help="stop after S seconds (default: run until SIGINT/SIGTERM)",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--env-file", metavar="FILE", help="KEY=VALUE file read before the environment")
    p.add_argument("--redis-url", metavar="URL", help="overrides REDIS_URL")
    p.set_defaults(handler=handle)


def _symbols(args: argparse.Namespace, configured: tuple[str, ...] | None) -> list[str]:
    """--symbol-count N, else the list (--symbols or SYMBOLS), else 10 symbols."""
    from harvest_async.tools.simulate import symbols_for

    if args.symbol_count is not None:
        return symbols_for(args.symbol_count)
    if configured is not None:
        return list(configured)
    return symbols_for(10)


def handle(args: argparse.Namespace) -> int:
    import anyio

    from harvest_async.clock import SystemClock, monotonic
    from harvest_async.redis_io.client import check_redis, client_for, describe_url
    from harvest_async.signals import cancel_on_signal
    from harvest_async.tools.simulate import Simulator, run_simulator

    settings = settings_from_args(args)
    symbols = _symbols(args, settings.symbols)
    clock = SystemClock()

    async def main() -> int:
        client = client_for(settings.redis_url, settings.redis_password, name="harvest-simulate")
        written = 0
        started = monotonic()
        try:
            await check_redis(settings)
            sim = Simulator(symbols, seed=args.seed, start=clock.now())
            print(
                f"simulating {len(symbols)} symbols at {args.rate:g} changes/s into "
                f"{describe_url(settings.redis_url)}"
                + (f" for {args.duration:g} s" if args.duration else " (Ctrl-C stops)"),
                flush=True,
            )
            async with anyio.create_task_group() as tg:

                def _count(n: int) -> None:
                    nonlocal written
                    written += n

                async def _run() -> None:
                    await run_simulator(
                        client,
                        settings.keys,
                        sim,
                        rate=args.rate,
                        duration=args.duration,
                        clock=clock,
                        on_write=_count,
                    )
                    tg.cancel_scope.cancel()

                tg.start_soon(cancel_on_signal, tg.cancel_scope)
                tg.start_soon(_run)
        finally:
            with anyio.CancelScope(shield=True):
                await client.aclose()
        print(f"wrote {written} hash changes in {monotonic() - started:.1f} s", flush=True)
        return 0

    return run_async(main)
