"""`harvest-async config`: the effective settings, each with where it came from.

The layers are those of every command (config.environ_with): the env file, then the
process environment, then the flags; a variable set in none of them is a default. A
setting made of several variables (the Redis URL from REDIS_HOST/REDIS_PORT/REDIS_DB, a
tunable from THETA_FILE or THETA_<NAME>) names the variable that decided it. Secrets are
masked: the password, and credentials inside the URL.

No I/O beyond reading the files the settings name (env file, theta file, password file).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from harvest_async.config import (
    COMPAT_REDIS_VARS,
    Settings,
    load_theta_file,
    settings_from_env,
)
from harvest_async.config.sentinel_url import mask_url
from harvest_async.core.keys import Keys
from harvest_async.core.models import Theta
from harvest_async.core.proposal import theta_id_for

__all__ = ["ConfigRow", "EffectiveConfig", "Layers", "effective_config", "render_text"]

MASK = "***"

# Settings fields whose variable is not simply the field's name upper-cased
_FIELD_VARS = {"redis_password": "REDIS_PASSWORD"}
_KEY_VARS = {
    "marketstate_prefix": "MARKETSTATE_PREFIX",
    "risk_prefix": "RISKPROPOSAL_PREFIX",
    "position_prefix": "POSITION_PREFIX",
    "harvest_prefix": "HARVEST_PREFIX",
    "stream": "STREAM_NAME",
    "liveness_prefix": "LIVENESS_PREFIX",
}
# variables read that are not one Settings field each
_OTHER_VARS = frozenset(
    {
        "REDIS_PASSWORD_FILE",
        "CREDENTIALS_DIRECTORY",
        "THETA_FILE",
        "FALLBACK_STOP_PCT",
        *COMPAT_REDIS_VARS,
    }
)


class ConfigRow(msgspec.Struct, frozen=True):
    variable: str
    value: str
    source: str


class EffectiveConfig(msgspec.Struct, frozen=True):
    settings: list[ConfigRow]
    theta_id: str
    unused: list[str]  # env-file variables that no setting reads


@dataclass(frozen=True)
class Layers:
    """What each layer gives; `flags` maps a variable to the flag that set it."""

    env_file: str | None = None
    file_vars: Mapping[str, str] = field(default_factory=dict)
    environ: Mapping[str, str] = field(default_factory=dict)
    flags: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # var -> (flag, value)

    def merged(self) -> dict[str, str]:
        out = dict(self.file_vars)
        out.update(self.environ)
        out.update({var: value for var, (_flag, value) in self.flags.items()})
        return out

    def given(self, var: str) -> bool:
        value = self.merged().get(var)
        return value is not None and value.strip() != ""

    def source(self, var: str) -> str:
        """Where `var` came from (the highest layer that sets it), or "default"."""
        if var in self.flags:
            return f"flag {self.flags[var][0]}"
        if _set(self.environ, var):
            return "environment"
        if _set(self.file_vars, var):
            return f"env file {self.env_file}"
        return "default"


def _set(layer: Mapping[str, str], var: str) -> bool:
    value = layer.get(var)
    return value is not None and value.strip() != ""


def _text(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value) or "(empty)"
    return str(value)


def _masked_url(url: str) -> str:
    return mask_url(url, MASK)


def _redis_url_row(settings: Settings, layers: Layers) -> ConfigRow:
    value = _masked_url(settings.redis_url)
    if layers.given("REDIS_URL"):
        return ConfigRow("REDIS_URL", value, layers.source("REDIS_URL"))
    compat = [var for var in COMPAT_REDIS_VARS if layers.given(var)]
    if compat:
        where = sorted({layers.source(var) for var in compat})
        return ConfigRow("REDIS_URL", value, f"{', '.join(compat)} ({'; '.join(where)})")
    return ConfigRow("REDIS_URL", value, "default")


def _password_row(settings: Settings, layers: Layers) -> ConfigRow:
    value = MASK if settings.redis_password or "@" in settings.redis_url else "(none)"
    if layers.given("REDIS_PASSWORD_FILE"):
        path = layers.merged()["REDIS_PASSWORD_FILE"].strip()
        where = layers.source("REDIS_PASSWORD_FILE")
        return ConfigRow("REDIS_PASSWORD", value, f"REDIS_PASSWORD_FILE {path} ({where})")
    creds = layers.merged().get("CREDENTIALS_DIRECTORY", "").strip()
    if creds and (Path(creds) / "redis-password").is_file():
        return ConfigRow("REDIS_PASSWORD", value, "systemd credential redis-password")
    if layers.given("REDIS_PASSWORD"):
        return ConfigRow("REDIS_PASSWORD", value, layers.source("REDIS_PASSWORD"))
    if value == MASK:
        return ConfigRow("REDIS_PASSWORD", value, "in REDIS_URL")
    return ConfigRow("REDIS_PASSWORD", value, "default")


def _theta_rows(theta: Theta, layers: Layers) -> list[ConfigRow]:
    merged = layers.merged()
    file = merged.get("THETA_FILE", "").strip()
    from_file = load_theta_file(file) if file else {}
    rows = [ConfigRow("THETA_FILE", file or "(unset)", layers.source("THETA_FILE"))]
    for name in Theta.__struct_fields__:
        var = f"THETA_{name.upper()}"
        value = _text(getattr(theta, name))
        if layers.given(var):
            source = layers.source(var)
        elif name in from_file:
            source = f"THETA_FILE {file} ({layers.source('THETA_FILE')})"
        elif name == "fallback_stop_pct" and layers.given("FALLBACK_STOP_PCT"):
            var, source = "FALLBACK_STOP_PCT", layers.source("FALLBACK_STOP_PCT")
        else:
            source = "default"
        rows.append(ConfigRow(var, value, source))
    return rows


def _key_rows(keys: Keys, layers: Layers) -> list[ConfigRow]:
    return [
        ConfigRow(var, getattr(keys, name), layers.source(var)) for name, var in _KEY_VARS.items()
    ]


def _field_row(name: str, value: Any, layers: Layers) -> ConfigRow:
    var = _FIELD_VARS.get(name, name.upper())
    text = _text(value)
    if name == "symbols" and value is None:
        text = "*"
    if name == "metrics_port" and value is None:
        text = "(off)"
    source = layers.source(var)
    if name == "instance" and source == "default":
        source = "default (the host name)"
    if any(word in var for word in ("PASSWORD", "SECRET", "TOKEN")):
        text = MASK if value else "(none)"
    return ConfigRow(var, text, source)


def effective_config(layers: Layers) -> EffectiveConfig:
    """The settings `run` would use with these layers (a ConfigError if it would refuse)."""
    settings = settings_from_env(layers.merged())
    rows: list[ConfigRow] = []
    known = set(_OTHER_VARS) | set(_KEY_VARS.values())
    for name in Settings.__struct_fields__:
        value = getattr(settings, name)
        if name == "redis_url":
            rows.append(_redis_url_row(settings, layers))
        elif name == "redis_password":
            rows.append(_password_row(settings, layers))
        elif name == "keys":
            rows.extend(_key_rows(value, layers))
        elif name == "theta":
            rows.extend(_theta_rows(value, layers))
            known.update(f"THETA_{n.upper()}" for n in Theta.__struct_fields__)
        else:
            rows.append(_field_row(name, value, layers))
    known.update(row.variable for row in rows)
    unused = sorted(var for var in layers.file_vars if var not in known)
    return EffectiveConfig(rows, theta_id_for(settings.theta), unused)


def render_text(config: EffectiveConfig) -> str:
    width = max(len(row.variable) for row in config.settings)
    value_width = min(40, max(len(row.value) for row in config.settings))
    lines = [f"{'VARIABLE':<{width}}  {'VALUE':<{value_width}}  SOURCE"]
    for row in config.settings:
        lines.append(f"{row.variable:<{width}}  {row.value:<{value_width}}  {row.source}")
    lines.append(f"theta_id {config.theta_id} (written into every proposal)")
    if config.unused:
        lines.append(f"not used (in the env file, read by no setting): {', '.join(config.unused)}")
    return "\n".join(lines)
