"""Shared CLI pieces: configuration flags -> Settings, and running async mains."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from harvest_async.cli_errors import EXIT_REDIS, EXIT_USAGE, CliError

T = TypeVar("T")

# flag -> environment variable it overrides
_FLAG_VARS = {
    "redis_url": "REDIS_URL",
    "symbols": "SYMBOLS",
    "publish_interval": "PUBLISH_INTERVAL_SEC",
    "max_publish_age": "MAX_PUBLISH_AGE_SEC",
    "theta_file": "THETA_FILE",
    "log_level": "LOG_LEVEL",
    "log_format": "LOG_FORMAT",
    "metrics_port": "METRICS_PORT",
    "instance": "INSTANCE",
}


def add_config_args(p: argparse.ArgumentParser, *, service: bool = True) -> None:
    """Flags that override the environment (INTERFACE §4)."""
    p.add_argument("--env-file", metavar="FILE", help="KEY=VALUE file read before the environment")
    p.add_argument("--redis-url", metavar="URL", help="overrides REDIS_URL")
    p.add_argument("--symbols", metavar="LIST", help="comma list or '*' (overrides SYMBOLS)")
    p.add_argument("--log-level", metavar="LEVEL", help="overrides LOG_LEVEL")
    p.add_argument("--log-format", choices=("text", "json"), help="overrides LOG_FORMAT")
    if service:
        p.add_argument("--publish-interval", metavar="SEC", help="overrides PUBLISH_INTERVAL_SEC")
        p.add_argument("--max-publish-age", metavar="SEC", help="overrides MAX_PUBLISH_AGE_SEC")
        p.add_argument("--theta-file", metavar="FILE", help="overrides THETA_FILE")
        p.add_argument("--metrics-port", metavar="PORT", help="overrides METRICS_PORT")
        p.add_argument("--instance", metavar="NAME", help="overrides INSTANCE (liveness key)")


def settings_from_args(args: argparse.Namespace, extra: dict[str, str] | None = None) -> Any:
    """Settings from env file + environment + flags; ConfigError -> exit 2."""
    from harvest_async.config import ConfigError, environ_with, settings_from_env
    from harvest_async.logs import setup_logging

    overrides = {
        var: str(getattr(args, name))
        for name, var in _FLAG_VARS.items()
        if getattr(args, name, None) is not None
    }
    if extra:
        overrides.update(extra)
    try:
        env = environ_with(getattr(args, "env_file", None), overrides)
        settings = settings_from_env(env)
    except ConfigError as exc:
        raise CliError(f"configuration: {exc}", EXIT_USAGE) from exc
    setup_logging(settings.log_level, settings.log_format)
    return settings


def run_async(main: Callable[[], Awaitable[T]]) -> T:
    """Run on uvloop when available; one line and exit 2 for PermissionDenied (an ACL
    problem is a configuration error), exit 3 for any other RedisUnavailable."""
    import anyio

    from harvest_async.errors import PermissionDenied, RedisUnavailable

    try:
        import uvloop  # noqa: F401

        options: dict[str, Any] = {"use_uvloop": True}
    except ImportError:  # pragma: no cover - non-Linux
        options = {}
    try:
        return anyio.run(main, backend="asyncio", backend_options=options)
    except RedisUnavailable as exc:
        code = EXIT_USAGE if isinstance(exc, PermissionDenied) else EXIT_REDIS
        raise CliError(str(exc), code) from exc
    except BaseExceptionGroup as group:
        # a TaskGroup wraps the one error that ended it; report that one
        redis_errors, rest = group.split(RedisUnavailable)
        if redis_errors is not None and rest is None:
            first = redis_errors.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            code = EXIT_USAGE if isinstance(first, PermissionDenied) else EXIT_REDIS
            raise CliError(str(first), code) from group
        raise
