"""Where and how the wire connects: a Redis URL parsed into an `Endpoint`.

Accepts what the service's REDIS_URL accepts and redis-py's `from_url` understands:
`redis://[user:password@]host[:port][/db]`, `rediss://` (TLS) with redis-py's `ssl_*`
query options, `unix:///path?db=N`, and `db=` / `socket_connect_timeout=` in the query.
redis-py's other client-tuning options (pool size, socket timeout, ...) have no meaning
for the wire and are ignored; an unknown option is an error, as it is for redis-py.
A `redis+sentinel://` URL (INTERFACE §7, `config.sentinel_url`) gives an endpoint whose
`sentinel` says where to ask for the primary; the wire resolves it at every connect.
`rediss+sentinel://` is the same over TLS: one context, from the same `ssl_*` options as
`rediss://`, for the sentinels and the data nodes.
Standard library only, so the wire can own its connections without redis-py.
"""

from __future__ import annotations

import dataclasses
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from harvest_async.config.sentinel_url import TLS_OPTIONS, is_sentinel_url, parse_sentinel_url

__all__ = ["Endpoint", "Sentinels", "endpoint_from_url"]

# redis-py client options that tune its pool, retries or sockets: nothing to do here
_IGNORED_OPTIONS = frozenset(
    {
        "socket_timeout",
        "socket_keepalive",
        "socket_read_size",
        "retry_on_timeout",
        "retry_on_error",
        "max_connections",
        "health_check_interval",
        "timeout",
        "protocol",
        "legacy_responses",
        "client_name",
        "ssl_include_verify_flags",
        "ssl_exclude_verify_flags",
    }
)
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_FALSE = frozenset({"0", "F", "FALSE", "N", "NO"})  # redis-py's to_bool


@dataclass(slots=True, eq=False)
class Sentinels:
    """Where the primary is found: the sentinels (asked in turn, the last one that
    answered first) and the service name they know it by."""

    addresses: tuple[tuple[str, int], ...]
    service: str
    username: str | None = None  # the sentinels' own credentials, if they require any
    password: str | None = None
    # bumped when a sentinel announces a new primary (+switch-master): a connection
    # opened under an older value talks to the old primary and is replaced
    switches: int = 0
    first: int = 0  # index of the sentinel to ask first
    # the old primary of the last switch heard: it stays writable until the sentinels
    # demote it (SENTINEL FAILOVER: up to 10 s), so a sentinel naming it is not believed
    demoted: tuple[str, int] | None = None
    tls: ssl.SSLContext | None = None  # rediss+sentinel://: to the sentinels (and data nodes)

    def describe(self) -> str:
        hosts = ",".join(f"{h}:{p}" if ":" not in h else f"[{h}]:{p}" for h, p in self.addresses)
        return f"{'rediss' if self.tls else 'redis'}+sentinel://{hosts}/{self.service}"


@dataclass(frozen=True, slots=True, eq=False)
class Endpoint:
    """A Redis server and the credentials and database to use on it."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # a unix socket instead of host and port
    tls: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0
    connect_timeout: float = 5.0
    sentinel: Sentinels | None = None  # host and port are then the primary's, found anew

    def describe(self) -> str:
        """Where, without credentials: for messages and logs."""
        if self.sentinel is not None:
            return self.sentinel.describe()
        if self.path is not None:
            return f"unix://{self.path}"
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}"

    def at(self, host: str, port: int) -> Endpoint:
        """The same credentials and database on the server at host:port (the primary a
        sentinel named)."""
        return dataclasses.replace(self, host=host, port=port, sentinel=None)


def endpoint_from_url(
    url: str, password: str | None = None, *, connect_timeout: float = 5.0
) -> Endpoint:
    """Parse `url`; `password` (REDIS_PASSWORD_FILE) applies when the URL has none.

    Raises ValueError naming what is wrong (scheme, database, option).
    """
    if is_sentinel_url(url):
        return _sentinel_endpoint(url, password, connect_timeout)
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"Redis URL must start with redis://, rediss:// or unix://, got {url!r}")
    options = {name: values[0] for name, values in parse_qs(parts.query).items() if values}
    unknown = set(options) - TLS_OPTIONS - _IGNORED_OPTIONS - {"db", "socket_connect_timeout"}
    if unknown:
        raise ValueError(f"unknown option(s) in the Redis URL: {', '.join(sorted(unknown))}")
    if "socket_connect_timeout" in options:
        connect_timeout = _seconds(options["socket_connect_timeout"])
    username = unquote(parts.username) if parts.username else None
    if parts.password:  # the URL's password wins, as in redis-py's from_url
        password = unquote(parts.password)
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// Redis URL needs the socket's path")
        return Endpoint(
            path=unquote(parts.path),
            username=username,
            password=password,
            db=_db(options.get("db", "0")),
            connect_timeout=connect_timeout,
        )
    return Endpoint(
        host=unquote(parts.hostname or "") or "localhost",
        port=parts.port or 6379,
        tls=_tls_context(options) if parts.scheme == "rediss" else None,
        username=username,
        password=password,
        db=_db(options.get("db") or unquote(parts.path).strip("/") or "0"),
        connect_timeout=connect_timeout,
    )


_DEPLOYMENTS: dict[tuple[Any, ...], Sentinels] = {}


def _sentinel_endpoint(url: str, password: str | None, connect_timeout: float) -> Endpoint:
    parsed = parse_sentinel_url(url)
    options = parsed.options
    if "socket_connect_timeout" in options:
        connect_timeout = _seconds(options["socket_connect_timeout"])
    # one Sentinels per deployment in the process: every connection to it sees the same
    # `switches` (a failover announced to one is news to all) and asks the same one first
    credentials = (options.get("sentinel_username"), options.get("sentinel_password"))
    tls_options = parsed.tls_options()
    tls_key = (parsed.tls, *sorted(tls_options.items()))
    key = (parsed.sentinels, parsed.service, *credentials, tls_key)
    sentinels = _DEPLOYMENTS.get(key)
    if sentinels is None:
        tls = _tls_context(tls_options) if parsed.tls else None
        sentinels = Sentinels(parsed.sentinels, parsed.service, *credentials, tls=tls)
        _DEPLOYMENTS[key] = sentinels
    host, port = parsed.sentinels[0]  # a placeholder: the primary is asked for at connect
    return Endpoint(
        host=host,
        port=port,
        tls=sentinels.tls,  # kept by `at`: the data nodes are on TLS too
        username=parsed.username,
        password=parsed.password or password,
        db=parsed.db,
        connect_timeout=connect_timeout,
        sentinel=sentinels,
    )


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"socket_connect_timeout must be a number of seconds > 0, got {raw!r}")
    return value


def _db(raw: str) -> int:
    if not raw.isdigit():
        raise ValueError(f"the Redis database must be a number >= 0, got {raw!r}")
    return int(raw)


def _tls_context(options: dict[str, str]) -> ssl.SSLContext:
    """The context redis-py's SSLConnection builds from the same options."""
    reqs = options.get("ssl_cert_reqs", "required").lower()
    if reqs not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs must be none, optional or required, got {reqs!r}")
    context = ssl.create_default_context()
    verify = _CERT_REQS[reqs]
    context.check_hostname = verify != ssl.CERT_NONE and (
        options.get("ssl_check_hostname", "true").upper() not in _FALSE
    )
    context.verify_mode = verify
    files = ""
    try:  # a missing or unreadable file is a configuration error, not a crash
        if "ssl_certfile" in options or "ssl_keyfile" in options:
            files = _given(options, "ssl_certfile", "ssl_keyfile")
            context.load_cert_chain(
                options.get("ssl_certfile", ""),
                options.get("ssl_keyfile"),
                options.get("ssl_password"),
            )
        if "ssl_ca_certs" in options or "ssl_ca_path" in options:
            files = _given(options, "ssl_ca_certs", "ssl_ca_path")
            context.load_verify_locations(options.get("ssl_ca_certs"), options.get("ssl_ca_path"))
    except OSError as exc:  # ssl.SSLError too: not a certificate, wrong key password
        raise ValueError(f"cannot load {files}: {exc.strerror or exc}") from None
    if "ssl_min_version" in options:
        context.minimum_version = tls_version(options["ssl_min_version"])
    if "ssl_ciphers" in options:
        context.set_ciphers(options["ssl_ciphers"])
    return context


def _given(options: dict[str, str], *names: str) -> str:
    return " ".join(f"{name}={options[name]}" for name in names if name in options)


def tls_version(raw: str) -> ssl.TLSVersion:
    """`TLSv1_2` or the number redis-py passes through (771 = TLS 1.2)."""
    try:
        return ssl.TLSVersion(int(raw)) if raw.isdigit() else ssl.TLSVersion[raw]
    except (KeyError, ValueError):
        raise ValueError(f"ssl_min_version: unknown TLS version {raw!r}") from None
