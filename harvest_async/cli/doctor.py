"""`harvest-async doctor`: named health checks; exit 0 ok, 1 a check failed, 3 no Redis."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from harvest_async.cli.args import positive_float
from harvest_async.cli.common import add_config_args, run_async, settings_from_args
from harvest_async.cli.exits import EXIT_OK, EXIT_REDIS, EXIT_USAGE, CliError

CHECKS = ("redis", "notifications", "inputs", "publisher", "group", "proposals", "stream")


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "doctor",
        help="check Redis, notifications, inputs, publisher, proposals and the audit stream",
        description=(
            "Named checks, each PASS/WARN/FAIL with one line of explanation and, when not "
            f"PASS, what to do. Checks: {', '.join(CHECKS)}. Exit status: 0 nothing failed, "
            "1 a check failed, 3 Redis unreachable or refusing us."
        ),
    )
    add_config_args(p, logs=False)
    p.add_argument(
        "--instance",
        metavar="NAME",
        help="require this publisher instance to be alive (default: INSTANCE if set, "
        "else any instance)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument(
        "--only",
        metavar="LIST",
        help="comma list of checks to run ('redis' always runs; 'group' needs GROUP): "
        + ",".join(CHECKS),
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=3.0,
        metavar="S",
        help="Redis socket timeout in seconds (default 3)",
    )
    p.set_defaults(handler=handle)


def _only(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown or not names:
        raise CliError(
            f"doctor: --only: unknown check {', '.join(unknown) or '(none)'}; "
            f"known: {', '.join(CHECKS)}",
            EXIT_USAGE,
        )
    return names


def handle(args: argparse.Namespace) -> int:
    from harvest_async.config import environ_with
    from harvest_async.tools.doctor import render_text, run_doctor

    only = _only(args.only)
    settings = settings_from_args(args)
    instance = args.instance or environ_with(args.env_file).get("INSTANCE") or None

    async def main() -> Any:
        return await run_doctor(settings, only=only, instance=instance, socket_timeout=args.timeout)

    report = run_async(main)
    if args.json:
        sys.stdout.write(report.to_json().decode() + "\n")
    else:
        print(render_text(report))
    sys.stdout.flush()
    code: int = report.exit_code
    if code == EXIT_REDIS:
        raise CliError(f"doctor: {report.checks[0].message}", EXIT_REDIS)
    if code != EXIT_OK:
        names = ", ".join(c.name for c in report.failed)
        raise CliError(f"doctor: {len(report.failed)} check(s) failed: {names}", code)
    return EXIT_OK
