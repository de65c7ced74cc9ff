"""`harvest-async compute`: what-if cases -> one JSON line each (no Redis, no event loop)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from harvest_async.cli.args import add_theta_arg, finite_float, non_negative_float, positive_float
from harvest_async.cli.exits import EXIT_ERROR, EXIT_OK, EXIT_USAGE, CliError


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "compute",
        help="what-if: cases (JSON array or JSON lines) -> one JSON line each",
        description=(
            "Run cases shaped like the kernel's reference vectors (position, market_state, "
            "p1_proposal, theta) and print one JSON line per case with its index (and name "
            "and symbol when given). By default each object is read as the service reads that "
            "input hash and goes through the service's validation first: a case the service "
            "would retract gets an 'error' line with the service's reason text. --raw runs the "
            "locked kernel alone (the spec's results for every reference vector)."
        ),
    )
    p.add_argument(
        "input", nargs="?", default="-", metavar="FILE", help="cases file; '-' or omitted: stdin"
    )
    add_theta_arg(p, "tunables used where a case sets none")
    p.add_argument(
        "--raw",
        action="store_true",
        help="the locked kernel alone, without the service's input validation",
    )
    p.add_argument(
        "--now",
        type=finite_float,
        metavar="EPOCH",
        help="judge time fields (ts_timestamp, ts_epoch, created_at) at this epoch second "
        "(default: now)",
    )
    p.add_argument(
        "--max-input-age",
        type=positive_float,
        default=300.0,
        metavar="SEC",
        help="as MAX_INPUT_AGE_SEC (default 300)",
    )
    p.add_argument(
        "--max-clock-skew",
        type=non_negative_float,
        default=5.0,
        metavar="SEC",
        help="as MAX_CLOCK_SKEW_SEC (default 5)",
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from harvest_async.clock import wall_time
    from harvest_async.config import load_theta
    from harvest_async.tools import compute as whatif

    theta = None if args.theta is None else load_theta(args.theta, variable="--theta")
    checks = None
    if not args.raw:
        checks = whatif.ServiceChecks(
            now=wall_time() if args.now is None else args.now,
            max_input_age_sec=args.max_input_age,
            max_clock_skew_sec=args.max_clock_skew,
        )
    if args.input == "-":
        status = whatif.run_compute(sys.stdin.buffer, sys.stdout, theta, checks=checks)
    else:
        try:
            stream = open(args.input, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise CliError(
                f"compute: cannot read {args.input!r}: {exc.strerror or exc}", EXIT_USAGE
            ) from exc
        with stream:
            status = whatif.run_compute(stream, sys.stdout, theta, checks=checks)
    if status != EXIT_OK:
        raise CliError("compute: some cases were rejected (see the 'error' lines)", EXIT_ERROR)
    return EXIT_OK
