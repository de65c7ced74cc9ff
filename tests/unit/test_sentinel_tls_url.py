"""REDIS_URL=rediss+sentinel://...: Sentinel over TLS, to the sentinels and the data
nodes, with the `ssl_*` options of rediss://; parsed, validated, never logged with its
credentials; read alike by the wire and by redis-py's Sentinel client."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelManagedSSLConnection

from harvest_async.config import ConfigError, settings_from_env
from harvest_async.config.sentinel_url import mask_url, parse_sentinel_url
from harvest_async.redis_io.client import client_for, describe_url, endpoint_for
from harvest_async.redis_io.wire_url import endpoint_from_url
from harvest_async.tools.effective_config import Layers, effective_config

CA = Path(ssl.get_default_verify_paths().openssl_cafile or "/etc/ssl/certs/ca-certificates.crt")


def test_the_same_syntax_with_tls_and_the_ssl_options() -> None:
    parsed = parse_sentinel_url(
        "rediss+sentinel://u:pw@s1:26380,s2/mymaster/3?ssl_ca_certs=/ca.pem&ssl_cert_reqs=none"
        "&sentinel_password=sp"
    )

    assert parsed.tls
    assert parsed.sentinels == (("s1", 26380), ("s2", 26379))
    assert (parsed.service, parsed.db, parsed.username, parsed.password) == (
        "mymaster",
        3,
        "u",
        "pw",
    )
    assert parsed.tls_options() == {"ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": "none"}
    assert parsed.describe() == "rediss+sentinel://s1:26380,s2:26379/mymaster/3"
    plain = parse_sentinel_url("redis+sentinel://s1/mymaster")
    assert not plain.tls and plain.tls_options() == {}


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("rediss+sentinel://h:26379", "rediss+sentinel://host:26379"),
        ("rediss+sentinel://h:26379/svc/x", "database must be a number"),
        ("rediss+sentinel://h:99999/svc", "invalid port"),
        ("rediss+sentinel://h/svc?ssl_pool=3", "unknown option(s) in the Sentinel URL: ssl_pool"),
        ("redis+sentinel://h/svc?ssl_ca_certs=/ca.pem", "TLS to the sentinels and the primary"),
        ("redis+sentinel://h/svc?ssl_cert_reqs=none", "is rediss+sentinel://"),
        ("redis+tls+sentinel://h/svc", "rediss+sentinel:// (Sentinel over TLS)"),
    ],
)
def test_invalid_urls_are_a_config_error_naming_redis_url(url: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_env({"REDIS_URL": url})

    assert caught.value.variable == "REDIS_URL"
    assert words in str(caught.value)


def test_settings_accept_it_with_the_rules_of_a_sentinel_url() -> None:
    settings = settings_from_env({"REDIS_URL": "rediss+sentinel://:secret@h/svc/2"})

    assert settings.keys.db == 2
    assert settings.redis_password is None  # stays in the URL, as with rediss://
    with pytest.raises(ConfigError, match="REDIS_HOST"):
        settings_from_env({"REDIS_URL": "rediss+sentinel://h/svc", "REDIS_HOST": "h"})
    with pytest.raises(ConfigError, match="REDIS_DB"):
        settings_from_env({"REDIS_URL": "rediss+sentinel://h/svc/1", "REDIS_DB": "2"})


def test_credentials_and_the_key_password_are_masked() -> None:
    url = (
        "rediss+sentinel://harvest:hunter2@s1,s2:26380/svc/0?ssl_keyfile=/k.pem"
        "&ssl_password=keysecret&sentinel_password=s3cret"
    )

    assert mask_url(url) == (
        "rediss+sentinel://***@s1,s2:26380/svc/0?ssl_keyfile=/k.pem"
        "&ssl_password=***&sentinel_password=***"
    )
    assert mask_url("rediss://h/0?ssl_password=keysecret") == "rediss://h/0?ssl_password=***"
    for secret in ("hunter2", "keysecret", "s3cret"):
        assert secret not in describe_url(url)
    rows = effective_config(Layers(environ={"REDIS_URL": url})).settings
    shown = " ".join(f"{row.variable}={row.value}" for row in rows)
    assert "rediss+sentinel://" in shown
    assert all(secret not in shown for secret in ("hunter2", "keysecret", "s3cret"))
    endpoint = endpoint_from_url(url.replace("ssl_keyfile=/k.pem&ssl_password=keysecret", ""))
    assert endpoint.describe() == "rediss+sentinel://s1:26379,s2:26380/svc"


def test_the_wire_speaks_tls_to_the_sentinels_and_to_the_data_nodes() -> None:
    url = f"rediss+sentinel://s1:1,s2:2/svc/4?ssl_ca_certs={CA}&ssl_check_hostname=false"
    endpoint = endpoint_from_url(url)

    assert endpoint.sentinel is not None
    context = endpoint.sentinel.tls
    assert context is not None and endpoint.tls is context
    assert context.verify_mode == ssl.CERT_REQUIRED and not context.check_hostname
    primary = endpoint.at("10.0.0.5", 6380)
    assert (primary.host, primary.port, primary.db, primary.sentinel) == ("10.0.0.5", 6380, 4, None)
    assert primary.tls is context  # the data nodes are on TLS too
    assert primary.describe() == "rediss://10.0.0.5:6380"
    # one deployment, one Sentinels: a failover heard by one connection is news to all
    assert endpoint_from_url(url).sentinel is endpoint.sentinel
    relaxed = endpoint_from_url("rediss+sentinel://s1:1,s2:2/svc/4?ssl_cert_reqs=none")
    assert relaxed.sentinel is not endpoint.sentinel
    assert relaxed.tls is not None and relaxed.tls.verify_mode == ssl.CERT_NONE
    plain = endpoint_from_url("redis+sentinel://s1:1,s2:2/svc/4")
    assert plain.tls is None and plain.sentinel is not None and plain.sentinel.tls is None


@pytest.mark.parametrize("scheme", ["rediss+sentinel://s/svc", "rediss://s/0"])
def test_a_bad_tls_option_is_refused_as_for_rediss(scheme: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ssl_cert_reqs must be"):
        endpoint_from_url(f"{scheme}?ssl_cert_reqs=maybe")
    with pytest.raises(
        ValueError, match=r"cannot load ssl_ca_certs=/nonexistent\.pem: No such file"
    ):
        endpoint_from_url(f"{scheme}?ssl_ca_certs=/nonexistent.pem")
    (tmp_path / "cert.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="cannot load ssl_certfile="):
        endpoint_from_url(f"{scheme}?ssl_certfile={tmp_path}/cert.pem&ssl_password=secret")
    with pytest.raises(ConfigError, match="cannot load ssl_ca_certs"):
        endpoint_for(settings_from_env({"REDIS_URL": f"{scheme}?ssl_ca_certs=/no.pem"}))


async def test_redis_pys_sentinel_client_gets_the_same_tls_settings() -> None:
    url = f"rediss+sentinel://s1:1/svc/0?ssl_ca_certs={CA}&ssl_check_hostname=false"
    client = client_for(url, name="t")
    try:
        pool = client.connection_pool
        assert pool.connection_class is SentinelManagedSSLConnection
        assert pool.connection_kwargs["ssl_ca_certs"] == str(CA)
        assert pool.connection_kwargs["ssl_check_hostname"] is False
        sentinels = client.sentinels
        assert sentinels is not None
        to_sentinel = sentinels.sentinels[0].connection_pool
        assert to_sentinel.connection_class is SSLConnection
        assert to_sentinel.connection_kwargs["ssl_ca_certs"] == str(CA)
    finally:
        await client.aclose()
    named = client_for(f"{url}&ssl_min_version=TLSv1_3", name="t")  # as the wire reads it
    try:
        assert named.connection_pool.connection_kwargs["ssl_min_version"] == ssl.TLSVersion.TLSv1_3
    finally:
        await named.aclose()
    with pytest.raises(ConfigError, match="ssl_min_version"):
        client_for(f"{url}&ssl_min_version=TLSv9", name="t")
    plain = client_for("redis+sentinel://s1:1/svc/0", name="t")
    try:
        assert plain.connection_pool.connection_class is not SentinelManagedSSLConnection
    finally:
        await plain.aclose()
