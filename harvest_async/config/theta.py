"""Theta (the kernel's tunables) from a file, THETA_* variables, or both: one loader."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import msgspec

from harvest_async.config.values import env_float, env_str
from harvest_async.core.kernel import KernelInputError, validate_theta
from harvest_async.core.models import Theta
from harvest_async.errors import ConfigError


def load_theta_file(path: str, *, variable: str = "THETA_FILE") -> dict[str, object]:
    """Read tunables from a TOML or JSON file (a flat table of names to values)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(variable, f"cannot read {path!r}: {exc.strerror}") from None
    try:
        obj = msgspec.toml.decode(data) if path.endswith(".toml") else msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise ConfigError(variable, f"{path}: {exc}") from None
    if isinstance(obj, dict) and isinstance(obj.get("theta"), dict):
        obj = obj["theta"]  # allow a [theta] table
    if not isinstance(obj, dict):
        raise ConfigError(variable, f"{path}: expected a table of tunables")
    return obj


def build_theta(values: Mapping[str, object], *, variable: str) -> Theta:
    try:
        theta = msgspec.convert(values, Theta, strict=False)
        validate_theta(theta)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if "unknown field" in message:
            message += f"; known: {', '.join(Theta.__struct_fields__)}"
        raise ConfigError(variable, message) from None
    except KernelInputError as exc:
        raise ConfigError(variable, str(exc)) from None
    return theta


def load_theta(path: str, *, variable: str, base: Mapping[str, object] | None = None) -> Theta:
    """Tunables from a TOML or JSON file (a flat table, or a `[theta]` table) on top of
    `base` (default: the kernel's defaults). The one loader behind THETA_FILE and every
    `--theta` flag, so they accept the same files."""
    values = {**(base or {}), **load_theta_file(path, variable=variable)}
    return build_theta(values, variable=f"{variable} {path}")


def theta_from_env(env: Mapping[str, str], fallback_stop_pct: float | None) -> Theta:
    values: dict[str, object] = {}
    if fallback_stop_pct is not None:
        values["fallback_stop_pct"] = fallback_stop_pct
    file = env_str(env, "THETA_FILE")
    if file is not None:
        values.update(load_theta_file(file))
    by_upper = {name.upper(): name for name in Theta.__struct_fields__}
    for var, raw in env.items():
        if not var.startswith("THETA_") or var == "THETA_FILE":
            continue
        name = by_upper.get(var[len("THETA_") :])
        if name is None:
            raise ConfigError(var, f"unknown tunable; known: {', '.join(sorted(by_upper))}")
        if name == "r_basis":
            values[name] = raw.strip()
        else:
            values[name] = env_float(env, var, 0.0)
    return build_theta(values, variable="THETA_FILE/THETA_*")
