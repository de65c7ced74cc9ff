"""`redis+sentinel://` URLs (INTERFACE §7): where the sentinels are and which primary to
ask them for. Standard library only: the config validates with it, the wire and the
redis-py client both build their connections from what it returns.

    redis+sentinel://[user:password@]host[:port][,host[:port]...]/SERVICE[/DB][?options]
    rediss+sentinel://...   the same over TLS, to the sentinels and to the data nodes

The port defaults to 26379 (Sentinel's). The credentials are the data nodes' (primary
and replicas), as in `redis://`; sentinels that require their own take the options
`sentinel_username` / `sentinel_password`. `socket_connect_timeout` applies to both, and
so do the `ssl_*` options of `rediss://` (CA, client certificate, verification): one TLS
setting for the whole deployment, as Sentinel's own `tls-replication` has.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import parse_qs, unquote

__all__ = [
    "SENTINEL_SCHEME",
    "SENTINEL_TLS_SCHEME",
    "TLS_OPTIONS",
    "SentinelURL",
    "is_sentinel_url",
    "mask_url",
    "parse_sentinel_url",
]

SENTINEL_SCHEME = "redis+sentinel://"
SENTINEL_TLS_SCHEME = "rediss+sentinel://"
SENTINEL_PORT = 26379
_OPTIONS = frozenset({"sentinel_username", "sentinel_password", "socket_connect_timeout"})
# the TLS options of a rediss:// URL (redis-py's names), for rediss+sentinel:// too
TLS_OPTIONS = frozenset(
    {
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_check_hostname",
        "ssl_ciphers",
        "ssl_min_version",
    }
)
_SECRETS = ("sentinel_password=", "ssl_password=")  # options masked with the userinfo


class SentinelURL(NamedTuple):
    sentinels: tuple[tuple[str, int], ...]  # asked in this order
    service: str  # the name the sentinels monitor the primary under (`sentinel monitor`)
    db: int
    username: str | None
    password: str | None
    options: dict[str, str]  # the query's options (see the module)
    tls: bool = False  # rediss+sentinel://: TLS to the sentinels and the data nodes

    def describe(self) -> str:
        """Without credentials: for logs and messages."""
        hosts = ",".join(_join(host, port) for host, port in self.sentinels)
        scheme = SENTINEL_TLS_SCHEME if self.tls else SENTINEL_SCHEME
        return f"{scheme}{hosts}/{self.service}/{self.db}"

    def tls_options(self) -> dict[str, str]:
        """The `ssl_*` options (empty without TLS)."""
        return {name: value for name, value in self.options.items() if name in TLS_OPTIONS}


def is_sentinel_url(url: str) -> bool:
    return url.startswith((SENTINEL_SCHEME, SENTINEL_TLS_SCHEME))


def mask_url(url: str, mask: str = "***") -> str:
    """Any Redis URL with its credentials replaced by `mask` (the userinfo, a Sentinel
    URL's `sentinel_password` option, and the client key's `ssl_password`)."""
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    head, question, query = rest.partition("?")
    if "@" in head:
        head = f"{mask}@{head.rsplit('@', 1)[1]}"
    if any(secret in query for secret in _SECRETS):
        query = "&".join(
            f"{part.split('=', 1)[0]}={mask}" if part.startswith(_SECRETS) else part
            for part in query.split("&")
        )
    rest = f"{head}{question}{query}"
    return f"{scheme}://{rest}"


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse and validate; ValueError says what is wrong (never echoing a password)."""
    if not is_sentinel_url(url):
        raise ValueError(f"a Sentinel URL starts with {SENTINEL_SCHEME} or {SENTINEL_TLS_SCHEME}")
    tls = url.startswith(SENTINEL_TLS_SCHEME)
    scheme = SENTINEL_TLS_SCHEME if tls else SENTINEL_SCHEME
    rest, _, query = url[len(scheme) :].partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts = netloc
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon and secret else None
    sentinels = tuple(_address(part) for part in hosts.split(","))
    segments = [unquote(s) for s in path.split("/")] if path else []
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash
    if not segments or not segments[0]:
        raise ValueError(
            "a Sentinel URL names the primary's service after the sentinels: "
            f"{scheme}host:26379[,host:port...]/SERVICE[/DB]"
        )
    if len(segments) > 2:
        raise ValueError(f"a Sentinel URL's path is /SERVICE[/DB], got /{path}")
    db_text = segments[1] if len(segments) == 2 else "0"
    if not db_text.isdigit():
        raise ValueError(f"the Redis database must be a number >= 0, got {db_text!r}")
    options = {name: values[0] for name, values in parse_qs(query).items() if values}
    known = _OPTIONS | TLS_OPTIONS if tls else _OPTIONS
    unknown = set(options) - known
    if unknown & TLS_OPTIONS:
        raise ValueError(
            f"TLS option(s) {', '.join(sorted(unknown & TLS_OPTIONS))} in a {SENTINEL_SCHEME} "
            f"URL: TLS to the sentinels and the primary is {SENTINEL_TLS_SCHEME}"
        )
    if unknown:
        raise ValueError(
            f"unknown option(s) in the Sentinel URL: {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(known))})"
        )
    return SentinelURL(sentinels, segments[0], int(db_text), username, password, options, tls)


def _address(text: str) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]` or `[v6]:port`."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, tail = text[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ValueError(f"bad sentinel address {text!r} (an IPv6 address is [addr]:port)")
        port_text = tail[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"a sentinel address needs a host, got {text!r}")
    if not port_text:
        return host, SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid port in sentinel address {text!r}")
    return host, int(port_text)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
