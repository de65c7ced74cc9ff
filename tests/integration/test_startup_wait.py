"""`run` started while Redis is down waits for it (REDIS_STARTUP_TIMEOUT_SEC, 0 = forever):
systemd is told why (STATUS=waiting for Redis at ..., no READY=1 until connected), the log
says it once; `--once` still exits 3 at once, and a timeout exits 3.

`harvest-async run` as a subprocess with NOTIFY_SOCKET pointing at a datagram socket that
stands in for systemd.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from harvest_async.core.keys import Keys
from harvest_async.tools.embedded_server import EmbeddedRedis

KEYS = Keys()
SYM = "BTCUSDT"


def _env(url: str, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "REDIS_URL": url,
        "SYMBOLS": SYM,
        "INSTANCE": "startup-wait",
        "PUBLISH_INTERVAL_SEC": "0",
    }
    env.update(extra)
    return env


def _run(
    *args: str, env: dict[str, str], timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harvest_async", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _receive(sock: socket.socket, seconds: float) -> list[str]:
    out: list[str] = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        sock.settimeout(max(0.01, until - time.monotonic()))
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return out


def _put_inputs(client: redis.Redis) -> None:
    now = time.time()
    client.hset(
        KEYS.marketstate(SYM),
        mapping={
            "sigma": "0.005",
            "ts": "0.5",
            "p_trend": "0.6",
            "p_mr": "0.2",
            "p_chop": "0.2",
            "ts_timestamp": str(int(now)),
        },
    )
    client.hset(KEYS.risk(SYM), mapping={"stop_dist_pct": "0.02"})
    client.hset(
        KEYS.position(SYM),
        mapping={
            "symbol": SYM,
            "side": "LONG",
            "quantity": "1.0",
            "entry_price": "100.0",
            "current_price": "105.0",
            "unrealized_pnl": "5.0",
            "created_at": str(int(now)),
            "ts_epoch": repr(round(now, 3)),
        },
    )


def test_run_waits_for_redis_then_publishes(
    fresh_redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    server = fresh_redis_server
    url = server.url
    server.kill()  # down before the service starts; start() brings it back at the same url
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_socket = str(tmp_path / "notify.sock")
    sock.bind(notify_socket)
    log_path = tmp_path / "service.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harvest_async", "run"],
            env=_env(url, NOTIFY_SOCKET=notify_socket, WATCHDOG_USEC="20000000"),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        waiting = _receive(sock, 3.0)
        assert proc.poll() is None, log_path.read_text()  # waiting, not exited
        assert not [m for m in waiting if "READY=1" in m], waiting
        statuses = [m for m in waiting if "STATUS=waiting for Redis at " in m]
        assert statuses, waiting
        assert f"STATUS=waiting for Redis at {url}" in statuses[0]
        assert "WATCHDOG=1" in statuses[0] and "EXTEND_TIMEOUT_USEC=" in statuses[0]

        server.start()
        back = time.monotonic()
        messages: list[str] = []
        while not any("READY=1" in m for m in messages) and time.monotonic() < back + 15:
            messages += _receive(sock, 0.2)
        assert any("READY=1" in m for m in messages), (messages, log_path.read_text())
        client = redis.Redis.from_url(url, decode_responses=True)
        try:
            _put_inputs(client)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if client.hget(KEYS.proposal(SYM), "harvest_action") == "PARTIAL_25":
                    break
                time.sleep(0.02)
            else:
                raise AssertionError("no proposal after Redis appeared:\n" + log_path.read_text())
        finally:
            client.close()
    finally:
        proc.terminate()
        proc.wait(10)
        sock.close()
    lines = log_path.read_text().splitlines()
    warnings = [line for line in lines if "WARNING" in line]
    assert len(warnings) == 1, lines  # once (reminders come a minute apart)
    assert "unavailable (startup: cannot reach Redis at" in warnings[0]
    assert [line for line in lines if "available again after" in line], lines


def test_run_gives_up_after_the_startup_timeout_with_exit_3() -> None:
    url = "redis://harvest:secret@127.0.0.1:1/0"
    started = time.monotonic()
    result = _run("run", env=_env(url, REDIS_STARTUP_TIMEOUT_SEC="1.5"))
    elapsed = time.monotonic() - started
    assert result.returncode == 3, result.stderr
    assert 1.5 <= elapsed < 10, elapsed
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("harvest-async: cannot reach Redis at redis://***@127.0.0.1:1/0")
    assert "REDIS_STARTUP_TIMEOUT_SEC=1.5" in last
    assert "secret" not in result.stderr


def test_once_doctor_and_record_exit_3_at_once(tmp_path: Path) -> None:
    env = _env("redis://127.0.0.1:1/0")  # REDIS_STARTUP_TIMEOUT_SEC unset: run would wait
    for args in (
        ["run", "--once"],
        ["doctor"],
        ["record", "--out", str(tmp_path / "rec.jsonl"), "--duration", "1"],
    ):
        started = time.monotonic()
        result = _run(*args, env=env)
        assert result.returncode == 3, (args, result.stderr)
        assert time.monotonic() - started < 8, args
        assert "cannot reach" in result.stderr, (args, result.stderr)
