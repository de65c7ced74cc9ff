"""A server older than the oldest supported one stops `harvest-async run` at start with one
line naming the minimum (exit 2), and `doctor` warns about it.

No Redis 5.0 or 6.0 binary is at hand, so the old server is a stand-in speaking just
enough RESP for a client's handshake, PING and INFO: what matters is what such a server
answers. Redis < 6.0 does not know HELLO (redis-py 8 opens every connection with it;
redis-py 5 does not send it), Redis 6.0 does; both report their version in INFO.
"""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import pytest


def _read_command(stream: IO[bytes]) -> list[bytes] | None:
    header = stream.readline()
    if not header.startswith(b"*"):
        return None
    args = []
    for _ in range(int(header[1:])):
        size = int(stream.readline()[1:])
        args.append(stream.read(size + 2)[:-2])
    return args


def _bulk(text: str) -> bytes:
    data = text.encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _reply(version: str, args: list[bytes]) -> bytes:
    name = args[0].upper()
    if name == b"HELLO":
        if tuple(int(p) for p in version.split(".")[:2]) < (6, 0):
            return b"-ERR unknown command `HELLO`, with args beginning with: `3`, \r\n"
        return b"%%3\r\n+server\r\n+redis\r\n+version\r\n%b+proto\r\n:3\r\n" % _bulk(version)
    if name == b"PING":
        return b"+PONG\r\n"
    if name == b"INFO":
        return _bulk(f"# Server\r\nredis_version:{version}\r\nredis_mode:standalone\r\n")
    if name == b"CLIENT" and args[1].upper() == b"SETNAME":
        return b"+OK\r\n"
    return b"-ERR unknown command `%b`\r\n" % args[0]


@contextmanager
def old_redis(version: str) -> Iterator[str]:
    """A server claiming to be Redis `version` on 127.0.0.1; yields its URL."""

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while (args := _read_command(self.rfile)) is not None:
                self.wfile.write(_reply(version, args))

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{server.server_address[1]}/0"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    return subprocess.run(
        [sys.executable, "-m", "harvest_async", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("version", ["5.0.14", "6.0.20"])
def test_run_refuses_an_old_server_with_one_line(version: str) -> None:
    with old_redis(version) as url:
        result = cli("run", "--redis-url", url)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("harvest-async: configuration: REDIS_URL: ")
    assert "harvest-async needs Redis 6.2 or newer" in lines[0]
    if version.startswith("6."):
        assert f"Redis {version} at {url} is too old" in lines[0]


def test_doctor_warns_on_an_unsupported_version() -> None:
    with old_redis("6.0.20") as url:
        result = cli("doctor", "--json", "--only", "redis", "--redis-url", url)
    report: dict[str, Any] = json.loads(result.stdout)
    (check,) = report["checks"]
    assert (check["status"], check["details"]["support"]) == ("WARN", "unsupported")
    assert "Redis 6.0.20 is too old: harvest-async needs Redis 6.2 or newer" in check["message"]
    assert "refuses to start" in check["action"]
