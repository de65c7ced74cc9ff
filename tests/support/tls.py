"""TLS for the integration tier: a self-signed certificate for 127.0.0.1 / localhost
(`tls_files`), serving as the CA, the servers' certificate and the clients' one, and the
server arguments that put a server (or a sentinel) on a TLS port with it."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harvest_async.tools.embedded_server import EmbeddedRedis, RedisServerError, ServerBinary

__all__ = ["no_tls_reason", "tls_args", "tls_files", "tls_query"]


@pytest.fixture
def tls_files(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(certificate, key), made with openssl (skipped where there is none)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subject = ["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    files = ["-keyout", str(key), "-out", str(cert)]
    new = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subprocess.run(
        ["openssl", *new, *subject, *files],
        check=True,
        capture_output=True,
    )
    yield cert, key


def tls_args(port: int, cert: Path, key: Path) -> tuple[str, ...]:
    """A server's (or a sentinel's) TLS port; clients must show a certificate the CA
    signed (tls-auth-clients defaults to yes), and so must its own replication links."""
    return (
        *("--tls-port", str(port), "--tls-cert-file", str(cert)),
        *("--tls-key-file", str(key), "--tls-ca-cert-file", str(cert)),
    )


def tls_query(cert: Path, key: Path) -> str:
    """A rediss:// URL's query verifying the server and showing our certificate."""
    return f"ssl_ca_certs={cert}&ssl_certfile={cert}&ssl_keyfile={key}"


def no_tls_reason(binary: ServerBinary, cert: Path, key: Path, port: int) -> str | None:
    """Why `binary` cannot serve TLS (a build without it), or None when it can."""
    try:
        EmbeddedRedis(binary, extra_args=tls_args(port, cert, key)).start().stop()
    except RedisServerError as exc:
        return f"{binary.id} has no TLS support: {str(exc).splitlines()[0]}"
    return None
