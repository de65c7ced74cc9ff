"""Typed readers of one variable each: a bad value is a ConfigError naming it."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping

from harvest_async.errors import ConfigError


def env_str(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value if value != "" else None


def env_float(
    env: Mapping[str, str],
    name: str,
    default: float,
    *,
    positive: bool = False,
    non_negative: bool = False,
) -> float:
    raw = env_str(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, f"expected a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ConfigError(name, f"must be finite, got {raw!r}")
    if positive and value <= 0:
        raise ConfigError(name, f"must be > 0, got {raw!r}")
    if non_negative and value < 0:
        raise ConfigError(name, f"must be >= 0, got {raw!r}")
    return value


def env_int(
    env: Mapping[str, str], name: str, default: int | None, *, lo: int, hi: int
) -> int | None:
    raw = env_str(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"expected an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(name, f"must be between {lo} and {hi}, got {raw!r}")
    return value


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env_str(env, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, f"expected true or false, got {raw!r}")


def env_choice(env: Mapping[str, str], name: str, default: str, choices: Mapping[str, str]) -> str:
    raw = env_str(env, name)
    if raw is None:
        return default
    key = raw.lower()
    if key not in choices:
        raise ConfigError(name, f"expected one of {', '.join(sorted(choices))}, got {raw!r}")
    return choices[key]


def env_ip_address(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env_str(env, name)
    if raw is None:
        return default
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        expected = "an IP address (127.0.0.1, 0.0.0.0, ::)"
        raise ConfigError(name, f"expected {expected}, got {raw!r}") from None


def env_prefix(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env_str(env, name)
    if raw is None:
        return default
    if any(ch.isspace() for ch in raw):
        raise ConfigError(name, f"must not contain whitespace, got {raw!r}")
    return raw


def split_csv(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    return tuple(part.strip() for part in raw.split(",") if part.strip())


_SYMBOL_OK = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.:/")


def env_symbols(env: Mapping[str, str]) -> tuple[str, ...] | None:
    raw = env_str(env, "SYMBOLS")
    if raw is None or raw == "*":
        return None
    symbols = split_csv(raw)
    if not symbols:
        raise ConfigError("SYMBOLS", "empty list; use '*' to follow every position key")
    for sym in symbols:
        if sym == "*" or not set(sym) <= _SYMBOL_OK:
            raise ConfigError("SYMBOLS", f"invalid symbol {sym!r} (use '*' alone for all)")
    return tuple(dict.fromkeys(symbols))
