"""Shared CLI pieces: configuration flags -> Settings, and running async mains."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from harvest_async.cli.args import add_symbols_arg, add_theta_arg

T = TypeVar("T")

# flag (argparse dest) -> environment variable it overrides
FLAG_VARS = {
    "redis_url": "REDIS_URL",
    "symbols": "SYMBOLS",
    "publish_interval": "PUBLISH_INTERVAL_SEC",
    "max_publish_age": "MAX_PUBLISH_AGE_SEC",
    "theta": "THETA_FILE",
    "log_level": "LOG_LEVEL",
    "log_format": "LOG_FORMAT",
    "metrics_port": "METRICS_PORT",
    "instance": "INSTANCE",
}


def add_config_args(
    p: argparse.ArgumentParser,
    *,
    logs: bool = True,
    theta: bool = False,
    decisions: bool = False,
    service: bool = False,
) -> None:
    """Flags that override the environment (README.md, "Configuration"). A command gets
    only the flags that change what it does: `logs` if it logs, `theta` and `decisions`
    (floor, heartbeat) if it decides, `service` (metrics, instance) for `run`."""
    p.add_argument("--env-file", metavar="FILE", help="KEY=VALUE file read before the environment")
    p.add_argument("--redis-url", metavar="URL", help="overrides REDIS_URL")
    add_symbols_arg(p, "comma list, or '*' for every symbol (overrides SYMBOLS)")
    if logs:
        p.add_argument("--log-level", metavar="LEVEL", help="overrides LOG_LEVEL")
        p.add_argument("--log-format", choices=("text", "json"), help="overrides LOG_FORMAT")
    if theta:
        add_theta_arg(p, "kernel tunables")
    if decisions:
        p.add_argument("--publish-interval", metavar="SEC", help="overrides PUBLISH_INTERVAL_SEC")
        p.add_argument("--max-publish-age", metavar="SEC", help="overrides MAX_PUBLISH_AGE_SEC")
    if service:
        p.add_argument("--metrics-port", metavar="PORT", help="overrides METRICS_PORT")
        p.add_argument("--instance", metavar="NAME", help="overrides INSTANCE (liveness key)")


def flag_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The variables the given flags set: {variable: value}."""
    return {
        var: str(getattr(args, name))
        for name, var in FLAG_VARS.items()
        if getattr(args, name, None) is not None
    }


def settings_from_args(args: argparse.Namespace, extra: dict[str, str] | None = None) -> Any:
    """Settings from env file + environment + flags."""
    from harvest_async.config import environ_with, settings_from_env
    from harvest_async.service.logs import setup_logging

    overrides = flag_overrides(args)
    if extra:
        overrides.update(extra)
    env = environ_with(getattr(args, "env_file", None), overrides)
    settings = settings_from_env(env)  # a ConfigError ends the command with exit 2
    setup_logging(settings.log_level, settings.log_format, instance=settings.instance)
    return settings


def run_async(main: Callable[[], Awaitable[T]]) -> T:
    """Run on uvloop when available (exceptions reach `cli.main`, which maps them)."""
    import anyio

    try:
        import uvloop  # noqa: F401

        options: dict[str, Any] = {"use_uvloop": True}
    except ImportError:  # pragma: no cover - non-Linux
        options = {}
    return anyio.run(main, backend="asyncio", backend_options=options)
