"""Settings: one frozen object built from a mapping (the environment, an env file, flags).

Invalid values raise ConfigError naming the variable; the CLI turns that into exit 2.
The original service's REDIS_HOST/REDIS_PORT/REDIS_DB/REDIS_PASSWORD are honoured when
REDIS_URL is unset; given together with REDIS_URL they must agree with it.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

import msgspec

from harvest_async.core import gate
from harvest_async.core.engine import EngineConfig
from harvest_async.core.kernel import KernelInputError, validate_theta
from harvest_async.core.keys import Keys
from harvest_async.core.models import Theta
from harvest_async.errors import ConfigError

__all__ = [
    "ConfigError",
    "Settings",
    "build_theta",
    "engine_config",
    "load_env_file",
    "load_theta",
    "load_theta_file",
    "settings_from_env",
]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    redis_url: str = "redis://localhost:6379/0"  # DEFAULT_REDIS_URL
    redis_password: str | None = None
    symbols: tuple[str, ...] | None = None  # None = "*": discover from position keys
    publish_interval_sec: float = 10.0
    max_publish_age_sec: float = 60.0
    change_eps_pct: float = 0.001
    r_eps: float = 0.05
    position_source: Literal["redis_hash", "synthetic"] = "redis_hash"
    enable_stream: bool = True
    stream_maxlen: int = 100_000
    max_input_age_sec: float = 300.0
    max_clock_skew_sec: float = 5.0
    # an input hash with more fields, or a used field's value longer, is invalid input
    max_input_fields: int = 256
    max_input_value_bytes: int = 4096
    input_streams: tuple[str, ...] = ()
    keys: Keys = Keys()
    theta: Theta = Theta()
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    # above this many publishes + retractions a second, one summary line per minute
    log_publish_detail_max_per_sec: float = 10.0
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    metrics_symbol_cap: int = 50
    instance: str = "default"
    liveness_ttl_sec: float = 30.0
    # how often to reconcile every symbol when keyspace notifications are unavailable
    poll_interval_sec: float = 2.0
    canary_timeout_sec: float = 2.0
    shutdown_grace_sec: float = 5.0
    # one round trip to Redis (a read, a transaction) taking longer is given up as lost
    redis_timeout_sec: float = 5.0
    # the proposal hash's TTL and `valid_until` (§2.5); 0: no TTL
    proposal_ttl_sec: float = 180.0


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value if value != "" else None


def _float(
    env: Mapping[str, str],
    name: str,
    default: float,
    *,
    positive: bool = False,
    non_negative: bool = False,
) -> float:
    raw = _get(env, name)
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


def _int(env: Mapping[str, str], name: str, default: int | None, *, lo: int, hi: int) -> int | None:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"expected an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(name, f"must be between {lo} and {hi}, got {raw!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, f"expected true or false, got {raw!r}")


def _choice(env: Mapping[str, str], name: str, default: str, choices: Mapping[str, str]) -> str:
    raw = _get(env, name)
    if raw is None:
        return default
    key = raw.lower()
    if key not in choices:
        raise ConfigError(name, f"expected one of {', '.join(sorted(choices))}, got {raw!r}")
    return choices[key]


def _ip_address(env: Mapping[str, str], name: str, default: str) -> str:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        expected = "an IP address (127.0.0.1, 0.0.0.0, ::)"
        raise ConfigError(name, f"expected {expected}, got {raw!r}") from None


def _prefix(env: Mapping[str, str], name: str, default: str) -> str:
    raw = _get(env, name)
    if raw is None:
        return default
    if any(ch.isspace() for ch in raw):
        raise ConfigError(name, f"must not contain whitespace, got {raw!r}")
    return raw


def _csv(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    return tuple(part.strip() for part in raw.split(",") if part.strip())


_SYMBOL_OK = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.:/")


def _symbols(env: Mapping[str, str]) -> tuple[str, ...] | None:
    raw = _get(env, "SYMBOLS")
    if raw is None or raw == "*":
        return None
    symbols = _csv(raw)
    if not symbols:
        raise ConfigError("SYMBOLS", "empty list; use '*' to follow every position key")
    for sym in symbols:
        if sym == "*" or not set(sym) <= _SYMBOL_OK:
            raise ConfigError("SYMBOLS", f"invalid symbol {sym!r} (use '*' alone for all)")
    return tuple(dict.fromkeys(symbols))


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


def _theta(env: Mapping[str, str], fallback_stop_pct: float | None) -> Theta:
    values: dict[str, object] = {}
    if fallback_stop_pct is not None:
        values["fallback_stop_pct"] = fallback_stop_pct
    file = _get(env, "THETA_FILE")
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
            values[name] = _float(env, var, 0.0)
    return build_theta(values, variable="THETA_FILE/THETA_*")


def _password_file(env: Mapping[str, str]) -> tuple[str, str] | None:
    """(password, where it came from) from REDIS_PASSWORD_FILE or the systemd credential."""
    path = _get(env, "REDIS_PASSWORD_FILE")
    name = "REDIS_PASSWORD_FILE"
    if path is None:
        creds = _get(env, "CREDENTIALS_DIRECTORY")  # systemd LoadCredential=
        if creds is not None and (Path(creds) / "redis-password").is_file():
            path = str(Path(creds) / "redis-password")
            name = "the redis-password credential"
    if path is None:
        return None
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError("REDIS_PASSWORD_FILE", f"cannot read {path!r}: {exc.strerror}") from None
    return (text, name) if text else None


def _password(env: Mapping[str, str], url_password: str | None) -> str | None:
    """The password from REDIS_PASSWORD_FILE / the credential / REDIS_PASSWORD (the
    original service's variable); two of them, or one and the URL's, must agree."""
    given: list[tuple[str, str]] = []
    from_file = _password_file(env)
    if from_file is not None:
        given.append(from_file)
    plain = env.get("REDIS_PASSWORD")  # not stripped: spaces may belong to a password
    if plain:
        given.append((plain, "REDIS_PASSWORD"))
    if url_password:
        given.append((url_password, "the password in REDIS_URL"))
    for value, name in given[1:]:
        if value != given[0][0]:
            raise ConfigError(
                "REDIS_PASSWORD",
                f"{given[0][1]} and {name} give different passwords; set only one of them",
            )
    if from_file is not None:
        return from_file[0]
    return plain or None  # the URL's password stays in the URL


DEFAULT_REDIS_URL = "redis://localhost:6379/0"
# the original service's connection variables (REDIS_PASSWORD is handled with the others)
COMPAT_REDIS_VARS = ("REDIS_HOST", "REDIS_PORT", "REDIS_DB")
_SAME_HOST = {"localhost": "127.0.0.1", "::1": "127.0.0.1", "[::1]": "127.0.0.1"}


class _RedisTarget(msgspec.Struct, frozen=True):
    host: str | None  # None: a unix socket
    port: int
    db: int


def _compat_target(env: Mapping[str, str]) -> tuple[_RedisTarget, dict[str, str]]:
    """What REDIS_HOST/REDIS_PORT/REDIS_DB say (defaults where unset), and the ones given."""
    given = {name: v for name in COMPAT_REDIS_VARS if (v := _get(env, name)) is not None}
    port = _int(env, "REDIS_PORT", 6379, lo=1, hi=65535)
    db = _int(env, "REDIS_DB", 0, lo=0, hi=1_000_000)
    assert port is not None and db is not None
    return _RedisTarget(given.get("REDIS_HOST", "localhost"), port, db), given


def _url_target(url: str, db: int) -> tuple[_RedisTarget, str | None]:
    """Host, port and database of REDIS_URL, and the password it carries (if any)."""
    if url.startswith("unix://"):
        parts = urlsplit(url)
        return _RedisTarget(None, 0, db), unquote(parts.password) if parts.password else None
    parts = urlsplit(url)
    try:
        port = parts.port or 6379
    except ValueError:
        raise ConfigError("REDIS_URL", f"invalid port in {url!r}") from None
    password = unquote(parts.password) if parts.password else None
    return _RedisTarget(parts.hostname or "localhost", port, db), password


def _disagreement(
    url_side: _RedisTarget, compat: _RedisTarget, given: dict[str, str]
) -> tuple[str, str] | None:
    """(variable, how) for the first given REDIS_HOST/PORT/DB that contradicts REDIS_URL."""
    if "REDIS_HOST" in given:
        if url_side.host is None:
            return "REDIS_HOST", f"the URL is a unix socket, REDIS_HOST={given['REDIS_HOST']}"
        a, b = (h.lower() for h in (url_side.host, compat.host or ""))
        if _SAME_HOST.get(a, a) != _SAME_HOST.get(b, b):
            host = given["REDIS_HOST"]
            return "REDIS_HOST", f"the URL's host is {url_side.host}, REDIS_HOST={host}"
    if "REDIS_PORT" in given and url_side.port != compat.port:
        where = "a unix socket" if url_side.host is None else f"port {url_side.port}"
        return "REDIS_PORT", f"the URL connects to {where}, REDIS_PORT={compat.port}"
    if "REDIS_DB" in given and url_side.db != compat.db:
        return "REDIS_DB", f"the URL selects database {url_side.db}, REDIS_DB={compat.db}"
    return None


def _redis_url(env: Mapping[str, str]) -> tuple[str, int, str | None]:
    """(url, db, password in the url): REDIS_URL, else one built from the original
    service's REDIS_HOST/REDIS_PORT/REDIS_DB; both given must agree (else exit 2)."""
    compat, given = _compat_target(env)
    raw = _get(env, "REDIS_URL")
    if raw is None:
        if not given:
            return DEFAULT_REDIS_URL, 0, None
        host = compat.host or "localhost"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address
        return f"redis://{host}:{compat.port}/{compat.db}", compat.db, None
    url = raw
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            "REDIS_URL", f"must start with redis://, rediss:// or unix://, got {url!r}"
        )
    db = 0
    if url.startswith("unix://"):
        if "db=" in url:
            db = _parse_db(url.split("db=", 1)[1].split("&", 1)[0])
    else:
        rest = url.split("://", 1)[1]
        path = rest.split("/", 1)[1] if "/" in rest else ""
        path = path.split("?", 1)[0]
        if path:
            db = _parse_db(path)
    target, password = _url_target(url, db)
    if given:
        problem = _disagreement(target, compat, given)
        if problem is not None:
            variable, how = problem
            raise ConfigError(
                "REDIS_URL",
                f"disagrees with {variable} ({how}); set REDIS_URL or the original "
                "REDIS_HOST/REDIS_PORT/REDIS_DB, not both",
            )
    return url, db, password


def _parse_db(raw: str) -> int:
    try:
        db = int(raw)
    except ValueError:
        raise ConfigError("REDIS_URL", f"database must be a number, got {raw!r}") from None
    if db < 0:
        raise ConfigError("REDIS_URL", f"database must be >= 0, got {db}")
    return db


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """Build and validate Settings from a mapping of variables (never reads os.environ)."""
    url, db, url_password = _redis_url(env)
    publish_interval = _float(env, "PUBLISH_INTERVAL_SEC", 10.0, non_negative=True)
    max_age = _float(env, "MAX_PUBLISH_AGE_SEC", 60.0, positive=True)
    if max_age < publish_interval:
        raise ConfigError(
            "MAX_PUBLISH_AGE_SEC",
            f"heartbeat {max_age} must be >= PUBLISH_INTERVAL_SEC {publish_interval}",
        )
    fallback_raw = _get(env, "FALLBACK_STOP_PCT")
    fallback = None
    if fallback_raw is not None:
        fallback = _float(env, "FALLBACK_STOP_PCT", 0.02, positive=True)
    position_source = _choice(
        env,
        "POSITION_SOURCE",
        "redis_hash",
        # `auto` is the original's name; here it never falls back to synthetic positions.
        {"redis_hash": "redis_hash", "auto": "redis_hash", "synthetic": "synthetic"},
    )
    keys = Keys(
        marketstate_prefix=_prefix(env, "MARKETSTATE_PREFIX", "quantum:marketstate:"),
        risk_prefix=_prefix(env, "RISKPROPOSAL_PREFIX", "quantum:risk:proposal:"),
        position_prefix=_prefix(env, "POSITION_PREFIX", "quantum:state:positions:"),
        harvest_prefix=_prefix(env, "HARVEST_PREFIX", "quantum:harvest:proposal:"),
        stream=_prefix(env, "STREAM_NAME", "quantum:stream:harvest.proposal"),
        liveness_prefix=_prefix(env, "LIVENESS_PREFIX", "quantum:harvest:publisher:"),
        db=db,
    )
    log_level = (_get(env, "LOG_LEVEL") or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError("LOG_LEVEL", f"expected DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
    instance = _get(env, "INSTANCE") or socket.gethostname()
    proposal_ttl = _proposal_ttl(env, max_age)
    return Settings(
        redis_url=url,
        redis_password=_password(env, url_password),
        symbols=_symbols(env),
        publish_interval_sec=publish_interval,
        max_publish_age_sec=max_age,
        change_eps_pct=_float(env, "CHANGE_EPS_PCT", 0.001, non_negative=True),
        r_eps=_float(env, "R_EPS", 0.05, non_negative=True),
        position_source=position_source,  # type: ignore[arg-type]
        enable_stream=_bool(env, "ENABLE_STREAM", True),
        stream_maxlen=_int(env, "STREAM_MAXLEN", 100_000, lo=1, hi=10**10) or 100_000,
        max_input_age_sec=_float(env, "MAX_INPUT_AGE_SEC", 300.0, positive=True),
        max_clock_skew_sec=_float(env, "MAX_CLOCK_SKEW_SEC", 5.0, non_negative=True),
        max_input_fields=_int(env, "MAX_INPUT_FIELDS", 256, lo=1, hi=1_000_000) or 256,
        # >= 64: the read script's O(1) size bound assumes no value is shorter in memory
        # than as text, which holds above the ~20 characters of an integer-encoded value
        max_input_value_bytes=_int(env, "MAX_INPUT_VALUE_BYTES", 4096, lo=64, hi=512 * 2**20)
        or 4096,
        input_streams=_csv(_get(env, "INPUT_STREAMS")),
        keys=keys,
        theta=_theta(env, fallback),
        log_level=log_level,
        log_format=_choice(env, "LOG_FORMAT", "text", {"text": "text", "json": "json"}),  # type: ignore[arg-type]
        log_publish_detail_max_per_sec=_float(
            env, "LOG_PUBLISH_DETAIL_MAX_PER_SEC", 10.0, non_negative=True
        ),
        metrics_port=_int(env, "METRICS_PORT", None, lo=1, hi=65535),
        metrics_addr=_ip_address(env, "METRICS_ADDR", "127.0.0.1"),
        metrics_symbol_cap=_int(env, "METRICS_SYMBOL_CAP", 50, lo=0, hi=100_000) or 0,
        instance=instance,
        liveness_ttl_sec=_float(env, "LIVENESS_TTL_SEC", 30.0, positive=True),
        poll_interval_sec=_float(env, "POLL_INTERVAL_SEC", 2.0, positive=True),
        canary_timeout_sec=_float(env, "CANARY_TIMEOUT_SEC", 2.0, positive=True),
        shutdown_grace_sec=_float(env, "SHUTDOWN_GRACE_SEC", 5.0, positive=True),
        redis_timeout_sec=_float(env, "REDIS_TIMEOUT_SEC", 5.0, positive=True),
        proposal_ttl_sec=proposal_ttl,
    )


def _proposal_ttl(env: Mapping[str, str], heartbeat: float) -> float:
    """PROPOSAL_TTL_SEC: default 3 x the heartbeat; 0 = no TTL; else longer than the
    heartbeat, which refreshes it (a shorter one would expire live proposals)."""
    ttl = _float(env, "PROPOSAL_TTL_SEC", 3 * heartbeat, non_negative=True)
    if 0 < ttl <= heartbeat:
        raise ConfigError(
            "PROPOSAL_TTL_SEC",
            f"must be 0 (no TTL) or longer than MAX_PUBLISH_AGE_SEC {heartbeat:g} (the "
            f"heartbeat refreshes it), got {ttl:g}",
        )
    if ttl > 10 * 365 * 86400:
        raise ConfigError("PROPOSAL_TTL_SEC", f"must be at most 10 years, got {ttl:g}")
    return ttl


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


def engine_config(settings: Settings) -> EngineConfig:
    """The engine's configuration for these Settings: one code path for the service,
    replay, doctor and explain, so they decide alike."""
    return EngineConfig(
        theta=settings.theta,
        gate=gate.GateConfig(
            floor_sec=settings.publish_interval_sec,
            heartbeat_sec=settings.max_publish_age_sec,
            change_eps=settings.change_eps_pct,
            r_eps=settings.r_eps,
        ),
        max_input_age_sec=settings.max_input_age_sec,
        max_clock_skew_sec=settings.max_clock_skew_sec,
        synthetic_positions=settings.position_source == "synthetic",
        symbols=settings.symbols,
        proposal_ttl_sec=settings.proposal_ttl_sec,
    )
