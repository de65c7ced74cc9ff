"""The tools on a Sentinel URL: `doctor` reports the primary the sentinels name and checks
notify-keyspace-events on it and on its replicas; `record` and `watch` accept the URL."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pytest

from harvest_async.config import settings_from_env
from harvest_async.service.app import serve
from harvest_async.tools.doctor import Check, Report, run_doctor
from tests.support.live import connected, make_settings, put_inputs
from tests.support.sentinel import SentinelTopology, sentinel_topology

__all__ = ["sentinel_topology"]  # the fixture, used by name below

pytestmark = pytest.mark.slow


def check(report: Report, name: str) -> Check:
    return next(c for c in report.checks if c.name == name)


def cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SYMBOLS", "LOG_LEVEL")}
    return subprocess.run(
        [sys.executable, "-m", "harvest_async", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def test_doctor_reports_the_primary_and_checks_every_replicas_flags(
    sentinel_topology: SentinelTopology,
) -> None:
    topology = sentinel_topology
    primary, replica = topology.primary(), topology.replica()
    settings = settings_from_env({"REDIS_URL": topology.url, "INSTANCE": "doctor-test"})

    report = await run_doctor(settings, only=["notifications"])

    redis = check(report, "redis")
    assert redis.status == "PASS", redis
    assert f"primary 127.0.0.1:{primary.port}" in redis.message
    assert redis.details["primary"] == f"127.0.0.1:{primary.port}"
    notifications = check(report, "notifications")
    assert notifications.status == "PASS", notifications
    assert "on the primary and its replicas" in notifications.message
    assert list(notifications.details["replicas"]) == [f"127.0.0.1:{replica.port}"]

    replica.command("CONFIG", "SET", "notify-keyspace-events", "")
    report = await run_doctor(settings, only=["notifications"])

    notifications = check(report, "notifications")
    assert notifications.status == "WARN"
    assert f"127.0.0.1:{replica.port}" in notifications.message
    assert "failover" in notifications.message


async def test_record_and_watch_accept_a_sentinel_url(
    sentinel_topology: SentinelTopology, tmp_path: object
) -> None:
    topology = sentinel_topology
    async with connected(topology.primary().url) as client:
        await put_inputs(client, "BTCUSDT", pnl=5.0)
    await serve(make_settings(topology.url), once=True)  # a proposal for watch to show
    out = f"{tmp_path}/sentinel.jsonl.gz"

    recorded = cli(
        "record", "--redis-url", topology.url, "--symbols", "*", "--out", out, "--duration", "1"
    )
    watched = cli("watch", "--redis-url", topology.url, "--symbols", "*", "--once")

    assert recorded.returncode == 0, recorded.stderr
    assert recorded.stdout.startswith("recorded "), recorded.stdout
    with gzip.open(out, "rt") as lines:
        header = json.loads(next(lines))
    assert "redis+sentinel://" in json.dumps(header)
    assert watched.returncode == 0, watched.stderr
    assert "BTCUSDT" in watched.stdout and "1 proposals" in watched.stdout
