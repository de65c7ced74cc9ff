"""Smoke tests for the real-server fixtures (each runs once per server flavour)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from harvest_async.redis_io.server_version import probe_server, support
from harvest_async.tools.embedded_server import EmbeddedRedis

# what the 'A' alias of notify-keyspace-events stands for (Redis 7 / Valkey 8)
_ALL_EVENT_CLASSES = "g$lshzxetd"
MESSAGE_DEADLINE = 5.0
Message = dict[str, Any]


async def _next_message(pubsub: PubSub, match: Callable[[Message], bool]) -> Message:
    """The first message satisfying ``match`` within MESSAGE_DEADLINE seconds.

    get_message blocks for the remaining time; its default timeout=0.0 would spin.
    """
    deadline = time.perf_counter() + MESSAGE_DEADLINE
    while (remaining := deadline - time.perf_counter()) > 0:
        message: Message | None = await pubsub.get_message(
            ignore_subscribe_messages=False, timeout=remaining
        )
        if message is not None and match(message):
            return message
    raise AssertionError(f"no matching pub/sub message within {MESSAGE_DEADLINE} s")


async def test_hset_emits_keyspace_notification(redis_url: str) -> None:
    subscriber = aioredis.from_url(redis_url)
    writer = aioredis.from_url(redis_url)
    pubsub = subscriber.pubsub()
    try:
        await pubsub.psubscribe("__keyspace@0__:quantum:*")
        await _next_message(pubsub, lambda m: m["type"] == "psubscribe")

        await writer.hset("quantum:marketstate:BTCUSDT", mapping={"sigma": "0.01", "ts": "0.3"})

        message = await _next_message(pubsub, lambda m: m["type"] == "pmessage")
        assert message["pattern"] == b"__keyspace@0__:quantum:*"
        assert message["channel"] == b"__keyspace@0__:quantum:marketstate:BTCUSDT"
        assert message["data"] == b"hset"
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await subscriber.aclose()
        await writer.aclose()


async def test_notify_keyspace_events_enabled(redis_url: str) -> None:
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        config = await client.config_get("notify-keyspace-events")
    finally:
        await client.aclose()
    flags = str(config["notify-keyspace-events"]).replace("A", _ALL_EVENT_CLASSES)
    assert {"K", "h", "g", "x"} <= set(flags), config


async def test_restart_loses_data_and_keeps_address(fresh_redis_server: EmbeddedRedis) -> None:
    server = fresh_redis_server
    url, pid = server.url, server.pid
    client = aioredis.from_url(url)
    try:
        await client.hset("quantum:state:positions:ETHUSDT", "side", "LONG")
        assert await client.exists("quantum:state:positions:ETHUSDT") == 1
    finally:
        await client.aclose()

    server.restart()

    assert server.url == url
    assert server.pid != pid
    client = aioredis.from_url(url)
    try:
        assert await client.ping() is True
        assert await client.exists("quantum:state:positions:ETHUSDT") == 0
    finally:
        await client.aclose()


def test_tcp_mode(redis_server_factory: Callable[..., EmbeddedRedis]) -> None:
    server = redis_server_factory(port=0, notify_keyspace_events="")
    assert server.port is not None
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    assert server.command("CONFIG", "GET", "notify-keyspace-events") == [
        b"notify-keyspace-events",
        b"",
    ]
    port = server.port
    server.restart()
    assert server.port == port
    assert server.command("PING") == b"PONG"


async def test_every_server_tested_is_supported(redis_url: str) -> None:
    """The servers the integration tier runs on are the ones README's "Supported" table
    and `support()` call supported: a new flavour found here must be added to both."""
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        server = await probe_server(client, redis_url)
    finally:
        await client.aclose()
    assert server is not None
    assert support(server) == ("supported", f"{server} is supported")
