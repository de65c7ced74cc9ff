"""The effective variables: an env file (systemd EnvironmentFile / docker env file
syntax), then the process environment, then flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from harvest_async.errors import ConfigError


def load_env_file(path: str) -> dict[str, str]:
    """Parse a systemd EnvironmentFile / docker env file: KEY=VALUE, # comments, quotes."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError("--env-file", f"cannot read {path!r}: {exc.strerror}") from None
    out: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if stripped.startswith("export "):
            stripped = stripped[len("export ") :].lstrip()
        if "=" not in stripped:
            raise ConfigError("--env-file", f"{path}:{lineno}: expected KEY=VALUE, got {line!r}")
        key, value = stripped.split("=", 1)
        key = key.strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


def environ_with(
    env_file: str | None,
    overrides: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The effective variables: env file, then the process environment, then flags."""
    merged: dict[str, str] = {}
    if env_file is not None:
        merged.update(load_env_file(env_file))
    merged.update(os.environ if base is None else base)
    if overrides:
        merged.update(overrides)
    return merged
