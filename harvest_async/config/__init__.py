"""Settings: one frozen object built from a mapping (the environment, an env file, flags).

Invalid values raise ConfigError naming the variable; the CLI turns that into exit 2.
The original service's REDIS_HOST/REDIS_PORT/REDIS_DB/REDIS_PASSWORD are honoured when
REDIS_URL is unset; given together with REDIS_URL they must agree with it.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from typing import Literal

import msgspec

from harvest_async.config.env_file import environ_with, load_env_file
from harvest_async.config.redis_target import (
    COMPAT_REDIS_VARS,
    DEFAULT_REDIS_URL,
    redis_password,
    redis_url,
)
from harvest_async.config.theta import build_theta, load_theta, load_theta_file, theta_from_env
from harvest_async.config.values import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_ip_address,
    env_prefix,
    env_str,
    env_symbols,
    split_csv,
)
from harvest_async.core import gate
from harvest_async.core.engine import EngineConfig
from harvest_async.core.keys import Keys
from harvest_async.core.models import Theta
from harvest_async.errors import ConfigError

__all__ = [
    "COMPAT_REDIS_VARS",
    "DEFAULT_REDIS_URL",
    "ConfigError",
    "Settings",
    "build_theta",
    "engine_config",
    "environ_with",
    "load_env_file",
    "load_theta",
    "load_theta_file",
    "settings_from_env",
]

_GROUP_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


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
    outage_reminder_sec: float = 60.0
    shutdown_grace_sec: float = 5.0
    # one round trip to Redis (a read, a transaction) taking longer is given up as lost
    redis_timeout_sec: float = 5.0
    redis_startup_timeout_sec: float = 0.0  # `run` waits that long for Redis; 0: forever
    # the proposal hash's TTL and `valid_until` (§2.5); 0: no TTL
    proposal_ttl_sec: float = 180.0
    # publisher groups (INTERFACE §6): None = a single publisher, nothing else changes
    group: str | None = None
    partitions: int = 64
    lease_ttl_sec: float = 4.0
    # Redis Cluster (INTERFACE §7): "auto" asks the server at start (cluster_enabled:1)
    redis_cluster: Literal["true", "false", "auto"] = "auto"


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """Build and validate Settings from a mapping of variables (never reads os.environ)."""
    url, db, url_password = redis_url(env)
    publish_interval = env_float(env, "PUBLISH_INTERVAL_SEC", 10.0, non_negative=True)
    max_age = env_float(env, "MAX_PUBLISH_AGE_SEC", 60.0, positive=True)
    if max_age < publish_interval:
        raise ConfigError(
            "MAX_PUBLISH_AGE_SEC",
            f"heartbeat {max_age} must be >= PUBLISH_INTERVAL_SEC {publish_interval}",
        )
    fallback_raw = env_str(env, "FALLBACK_STOP_PCT")
    fallback = None
    if fallback_raw is not None:
        fallback = env_float(env, "FALLBACK_STOP_PCT", 0.02, positive=True)
    position_source = env_choice(
        env,
        "POSITION_SOURCE",
        "redis_hash",
        # `auto` is the original's name; here it never falls back to synthetic positions.
        {"redis_hash": "redis_hash", "auto": "redis_hash", "synthetic": "synthetic"},
    )
    keys = Keys(
        marketstate_prefix=env_prefix(env, "MARKETSTATE_PREFIX", "quantum:marketstate:"),
        risk_prefix=env_prefix(env, "RISKPROPOSAL_PREFIX", "quantum:risk:proposal:"),
        position_prefix=env_prefix(env, "POSITION_PREFIX", "quantum:state:positions:"),
        harvest_prefix=env_prefix(env, "HARVEST_PREFIX", "quantum:harvest:proposal:"),
        stream=env_prefix(env, "STREAM_NAME", "quantum:stream:harvest.proposal"),
        liveness_prefix=env_prefix(env, "LIVENESS_PREFIX", "quantum:harvest:publisher:"),
        db=db,
    )
    log_level = (env_str(env, "LOG_LEVEL") or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError("LOG_LEVEL", f"expected DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
    instance = env_str(env, "INSTANCE") or socket.gethostname()
    proposal_ttl = _proposal_ttl(env, max_age)
    return Settings(
        redis_url=url,
        redis_password=redis_password(env, url_password),
        symbols=env_symbols(env),
        publish_interval_sec=publish_interval,
        max_publish_age_sec=max_age,
        change_eps_pct=env_float(env, "CHANGE_EPS_PCT", 0.001, non_negative=True),
        r_eps=env_float(env, "R_EPS", 0.05, non_negative=True),
        position_source=position_source,  # type: ignore[arg-type]
        enable_stream=env_bool(env, "ENABLE_STREAM", True),
        stream_maxlen=env_int(env, "STREAM_MAXLEN", 100_000, lo=1, hi=10**10) or 100_000,
        max_input_age_sec=env_float(env, "MAX_INPUT_AGE_SEC", 300.0, positive=True),
        max_clock_skew_sec=env_float(env, "MAX_CLOCK_SKEW_SEC", 5.0, non_negative=True),
        max_input_fields=env_int(env, "MAX_INPUT_FIELDS", 256, lo=1, hi=1_000_000) or 256,
        # >= 64: the read script's O(1) size bound assumes no value is shorter in memory
        # than as text, which holds above the ~20 characters of an integer-encoded value
        max_input_value_bytes=env_int(env, "MAX_INPUT_VALUE_BYTES", 4096, lo=64, hi=512 * 2**20)
        or 4096,
        input_streams=split_csv(env_str(env, "INPUT_STREAMS")),
        keys=keys,
        theta=theta_from_env(env, fallback),
        log_level=log_level,
        log_format=env_choice(env, "LOG_FORMAT", "text", {"text": "text", "json": "json"}),  # type: ignore[arg-type]
        log_publish_detail_max_per_sec=env_float(
            env, "LOG_PUBLISH_DETAIL_MAX_PER_SEC", 10.0, non_negative=True
        ),
        metrics_port=env_int(env, "METRICS_PORT", None, lo=1, hi=65535),
        metrics_addr=env_ip_address(env, "METRICS_ADDR", "127.0.0.1"),
        metrics_symbol_cap=env_int(env, "METRICS_SYMBOL_CAP", 50, lo=0, hi=100_000) or 0,
        instance=instance,
        liveness_ttl_sec=env_float(env, "LIVENESS_TTL_SEC", 30.0, positive=True),
        poll_interval_sec=env_float(env, "POLL_INTERVAL_SEC", 2.0, positive=True),
        canary_timeout_sec=env_float(env, "CANARY_TIMEOUT_SEC", 2.0, positive=True),
        outage_reminder_sec=env_float(env, "OUTAGE_REMINDER_SEC", 60.0, positive=True),
        shutdown_grace_sec=env_float(env, "SHUTDOWN_GRACE_SEC", 5.0, positive=True),
        redis_timeout_sec=env_float(env, "REDIS_TIMEOUT_SEC", 5.0, positive=True),
        redis_startup_timeout_sec=env_float(
            env, "REDIS_STARTUP_TIMEOUT_SEC", 0.0, non_negative=True
        ),
        proposal_ttl_sec=proposal_ttl,
        group=_group(env),
        partitions=env_int(env, "PARTITIONS", 64, lo=1, hi=4096) or 64,
        lease_ttl_sec=_lease_ttl(env),
        redis_cluster=_cluster(env, url, db),  # type: ignore[arg-type]
    )


def _cluster(env: Mapping[str, str], url: str, db: int) -> str:
    """REDIS_CLUSTER=true|false|auto: a cluster is reached through a redis:// or
    rediss:// URL of any of its nodes, and has only database 0."""
    mode = env_choice(
        env,
        "REDIS_CLUSTER",
        "auto",
        {"true": "true", "false": "false", "auto": "auto", "1": "true", "0": "false"},
    )
    if mode == "true":
        if not url.startswith(("redis://", "rediss://")):
            raise ConfigError(
                "REDIS_CLUSTER", "true needs REDIS_URL=redis://host:port (any node of the cluster)"
            )
        if db != 0:
            raise ConfigError("REDIS_URL", f"a Redis Cluster has only database 0, got db {db}")
    return mode


def _group(env: Mapping[str, str]) -> str | None:
    """GROUP: a name made of letters, digits, '.', '_', '-' (it goes into key names; a
    brace would change their cluster hash tag)."""
    name = env_str(env, "GROUP")
    if name is not None and not _GROUP_NAME.fullmatch(name):
        raise ConfigError(
            "GROUP", f"expected letters, digits, '.', '_' or '-' (at most 64), got {name!r}"
        )
    return name


def _lease_ttl(env: Mapping[str, str]) -> float:
    """LEASE_TTL_SEC: renewed every TTL/4 and given up at 0.6 x TTL, so under a second
    leaves no room for one slow round trip; over 10 minutes is no failover."""
    ttl = env_float(env, "LEASE_TTL_SEC", 4.0, positive=True)
    if not 1.0 <= ttl <= 600.0:
        raise ConfigError("LEASE_TTL_SEC", f"must be between 1 and 600 seconds, got {ttl:g}")
    return ttl


def _proposal_ttl(env: Mapping[str, str], heartbeat: float) -> float:
    """PROPOSAL_TTL_SEC: default 3 x the heartbeat; 0 = no TTL; else longer than the
    heartbeat, which refreshes it (a shorter one would expire live proposals)."""
    ttl = env_float(env, "PROPOSAL_TTL_SEC", 3 * heartbeat, non_negative=True)
    if 0 < ttl <= heartbeat:
        raise ConfigError(
            "PROPOSAL_TTL_SEC",
            f"must be 0 (no TTL) or longer than MAX_PUBLISH_AGE_SEC {heartbeat:g} (the "
            f"heartbeat refreshes it), got {ttl:g}",
        )
    if ttl > 10 * 365 * 86400:
        raise ConfigError("PROPOSAL_TTL_SEC", f"must be at most 10 years, got {ttl:g}")
    return ttl


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
