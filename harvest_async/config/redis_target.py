"""Where Redis is and how to authenticate: REDIS_URL, else the original service's
REDIS_HOST/REDIS_PORT/REDIS_DB; REDIS_PASSWORD(_FILE) or the systemd credential."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

import msgspec

from harvest_async.config.sentinel_url import is_sentinel_url, mask_url, parse_sentinel_url
from harvest_async.config.values import env_int, env_str
from harvest_async.errors import ConfigError


def _password_file(env: Mapping[str, str]) -> tuple[str, str] | None:
    """(password, where it came from) from REDIS_PASSWORD_FILE or the systemd credential."""
    path = env_str(env, "REDIS_PASSWORD_FILE")
    name = "REDIS_PASSWORD_FILE"
    if path is None:
        creds = env_str(env, "CREDENTIALS_DIRECTORY")  # systemd LoadCredential=
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


def redis_password(env: Mapping[str, str], url_password: str | None) -> str | None:
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
    given = {name: v for name in COMPAT_REDIS_VARS if (v := env_str(env, name)) is not None}
    port = env_int(env, "REDIS_PORT", 6379, lo=1, hi=65535)
    db = env_int(env, "REDIS_DB", 0, lo=0, hi=1_000_000)
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


def redis_url(env: Mapping[str, str]) -> tuple[str, int, str | None]:
    """(url, db, password in the url): REDIS_URL, else one built from the original
    service's REDIS_HOST/REDIS_PORT/REDIS_DB; both given must agree (else exit 2)."""
    compat, given = _compat_target(env)
    raw = env_str(env, "REDIS_URL")
    if raw is None:
        if not given:
            return DEFAULT_REDIS_URL, 0, None
        host = compat.host or "localhost"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address
        return f"redis://{host}:{compat.port}/{compat.db}", compat.db, None
    url = raw
    if is_sentinel_url(url):
        return _sentinel_target(url, compat, given)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            "REDIS_URL",
            "must start with redis://, rediss://, unix://, redis+sentinel:// or "
            f"rediss+sentinel:// (Sentinel over TLS), got {mask_url(url)!r}",
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


def _sentinel_target(
    url: str, compat: _RedisTarget, given: dict[str, str]
) -> tuple[str, int, str | None]:
    """A redis+sentinel:// or rediss+sentinel:// URL (INTERFACE §7): the primary's
    address comes from the sentinels, so REDIS_HOST/REDIS_PORT cannot apply; REDIS_DB
    must agree."""
    try:
        parsed = parse_sentinel_url(url)
    except ValueError as exc:
        raise ConfigError("REDIS_URL", f"{exc} (in {mask_url(url)!r})") from None
    for name in ("REDIS_HOST", "REDIS_PORT"):
        if name in given:
            raise ConfigError(
                "REDIS_URL",
                f"is a Sentinel URL: the primary's address comes from the sentinels, so "
                f"{name}={given[name]} cannot apply; unset {name}",
            )
    if "REDIS_DB" in given and compat.db != parsed.db:
        raise ConfigError(
            "REDIS_URL",
            f"disagrees with REDIS_DB (the URL selects database {parsed.db}, "
            f"REDIS_DB={compat.db}); set only one of them",
        )
    return url, parsed.db, parsed.password


def _parse_db(raw: str) -> int:
    try:
        db = int(raw)
    except ValueError:
        raise ConfigError("REDIS_URL", f"database must be a number, got {raw!r}") from None
    if db < 0:
        raise ConfigError("REDIS_URL", f"database must be >= 0, got {db}")
    return db
