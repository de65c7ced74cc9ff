"""REDIS_URL=rediss+sentinel://... against a Sentinel deployment on TLS only: primary,
replica and sentinels on TLS ports, replication over TLS, client certificates required
(`sentinel_tls_topology`; skipped for a binary built without TLS). The service finds the
primary through the sentinels over TLS, publishes, and follows a SENTINEL FAILOVER; the
tools take the URL; a client that does not verify the certificates gets nowhere."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
import redis.asyncio as aioredis

from harvest_async.config import settings_from_env
from harvest_async.errors import RedisUnavailable
from harvest_async.redis_io.client import client_for
from harvest_async.redis_io.wire import Wire, command, endpoint_from_url
from harvest_async.service.app import serve
from harvest_async.tools.doctor import run_doctor
from tests.integration.test_sentinel import converge
from tests.integration.test_sentinel_tools import check, cli
from tests.support.live import (
    audit,
    connected,
    make_settings,
    messages,
    proposals,
    put_inputs,
    running,
)
from tests.support.sentinel import SentinelTopology, sentinel_tls_topology
from tests.support.tls import tls_files

__all__ = ["sentinel_tls_topology", "tls_files"]  # the fixtures, used by name below

pytestmark = pytest.mark.slow

SYMBOLS = [f"T{i:02d}USDT" for i in range(6)]


@asynccontextmanager
async def producer(url: str) -> AsyncIterator[aioredis.Redis]:
    """redis-py's Sentinel client over TLS (the tools' path), following the primary."""
    client = client_for(url, name="test-producer")
    try:
        yield client
    finally:
        await client.aclose()


async def test_the_service_publishes_through_tls_sentinels_and_follows_a_failover(
    sentinel_tls_topology: SentinelTopology, caplog: pytest.LogCaptureFixture
) -> None:
    topology = sentinel_tls_topology
    caplog.set_level(logging.INFO)
    settings = make_settings(topology.url, SYMBOLS=",".join(SYMBOLS), CANARY_TIMEOUT_SEC="1")
    pnl = {symbol: float(i) for i, symbol in enumerate(SYMBOLS)}
    async with producer(topology.url) as client:
        for symbol, value in pnl.items():
            await put_inputs(client, symbol, pnl=value)
        async with running(settings):
            await converge(client, pnl, 5.0, SYMBOLS)
            old = topology.primary()
            new, accepted = await anyio.to_thread.run_sync(topology.failover)
            async with connected(new.url) as direct:  # its unix socket: the harness's
                for symbol in SYMBOLS:
                    pnl[symbol] += 0.5
                    await put_inputs(direct, symbol, pnl=pnl[symbol])
                await converge(direct, pnl, 5.0 - (time.perf_counter() - accepted), SYMBOLS)
                await anyio.to_thread.run_sync(topology.wait_demoted, old)
                # the TLS producer finds the new primary too
                await put_inputs(client, SYMBOLS[0], pnl=42.0)
                pnl[SYMBOLS[0]] = 42.0
                await converge(direct, pnl, 5.0, SYMBOLS)
                entries = await audit(direct)
    assert topology.primary() is new
    assert entries
    moved = messages(caplog, "Sentinel failover: the primary moved")
    assert len(moved) == 1, moved
    assert f":{topology.port_of(new)}" in moved[0]


async def test_run_once_doctor_record_and_watch_on_tls_sentinels(
    sentinel_tls_topology: SentinelTopology, tmp_path: object
) -> None:
    topology = sentinel_tls_topology
    primary, replica = topology.primary(), topology.replica()
    async with connected(primary.url) as client:
        await put_inputs(client, "BTCUSDT", pnl=5.0)
    await serve(make_settings(topology.url), once=True)
    async with connected(primary.url) as client:
        found = await proposals(client, ["BTCUSDT"])
    assert found["BTCUSDT"].get("position_unrealized_pnl") == repr(5.0)

    settings = settings_from_env({"REDIS_URL": topology.url, "INSTANCE": "doctor-tls"})
    report = await run_doctor(settings, only=["notifications"])
    redis = check(report, "redis")
    assert redis.status == "PASS", redis
    assert redis.details["primary"] == f"127.0.0.1:{topology.port_of(primary)}"
    notifications = check(report, "notifications")
    assert notifications.status == "PASS", notifications
    assert list(notifications.details["replicas"]) == [f"127.0.0.1:{topology.port_of(replica)}"]

    out = f"{tmp_path}/tls.jsonl.gz"
    url = topology.url
    recorded = cli("record", "--redis-url", url, "--symbols", "*", "--out", out, "--duration", "1")
    watched = cli("watch", "--redis-url", url, "--symbols", "*", "--once")
    assert recorded.returncode == 0, recorded.stderr
    assert recorded.stdout.startswith("recorded "), recorded.stdout
    assert watched.returncode == 0, watched.stderr
    assert "BTCUSDT" in watched.stdout and "1 proposals" in watched.stdout


async def test_tls_sentinels_are_verified_and_not_reached_in_plain(
    sentinel_tls_topology: SentinelTopology,
) -> None:
    url = sentinel_tls_topology.url
    unverified = url.split("?", 1)[0] + "?" + url.split("?", 1)[1].split("&", 1)[1]
    assert "ssl_ca_certs" not in unverified  # the client certificate is still shown
    wire = Wire(endpoint_from_url(unverified, connect_timeout=2.0), name="test-unverified")
    try:
        with pytest.raises(RedisUnavailable, match="SSLCertVerificationError"):
            await wire.roundtrip(command("PING"), 1)
    finally:
        wire.close()

    plain = url.replace("rediss+sentinel://", "redis+sentinel://").split("?", 1)[0]
    wire = Wire(endpoint_from_url(plain, connect_timeout=2.0), name="test-plain")
    try:
        with pytest.raises(RedisUnavailable, match="no sentinel named the primary"):
            await wire.roundtrip(command("PING"), 1)
    finally:
        wire.close()
