"""The wire (harvest_async.redis_io.wire) against real servers, both flavours.

Handshake (password, ACL user, database, unix socket, TCP, TLS), pipelined round trips
with error replies returned by code, transactions, and the promises about failures: a
timeout, a killed connection or a cancellation closes the connection, the next round
trip opens a new one, and no reply ever reaches the wrong request. An independent
redis-py client does the administration and checks what the server saw.
"""

from __future__ import annotations

import inspect
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from harvest_async.errors import (
    AuthenticationFailed,
    RedisReplyError,
    RedisServerError,
    RedisUnavailable,
    ReplyTimeout,
    WriteUncertain,
)
from harvest_async.redis_io.wire import Subscriber, Wire, command, endpoint_from_url
from harvest_async.tools.embedded_server import EmbeddedRedis
from tests.support.tls import tls_args, tls_files, tls_query

__all__ = ["tls_files"]  # the fixture, used by name below


async def until(condition: Callable[[], Any], limit: float = 5.0) -> None:
    """Wait until `condition()` (or what it returns, if awaitable) is true."""
    with anyio.fail_after(limit):
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await anyio.sleep(0.01)


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def admin_of() -> AsyncIterator[Callable[[str], aioredis.Redis]]:
    """redis-py clients for servers other than `redis_url`'s, closed at the end."""
    clients: list[aioredis.Redis] = []

    def make(url: str) -> aioredis.Redis:
        clients.append(aioredis.from_url(url, decode_responses=True))
        return clients[-1]

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
async def wire(redis_url: str) -> AsyncIterator[Wire]:
    wire = Wire(endpoint_from_url(redis_url), name="wire-test", timeout=2.0)
    yield wire
    wire.close()


async def client_id(wire: Wire) -> int:
    (reply,) = await wire.roundtrip(command("CLIENT", "ID"), 1)
    assert isinstance(reply, int)
    return reply


# -- round trips ---------------------------------------------------------------------------


async def test_pipelined_replies_in_order_with_error_replies_as_values(wire: Wire) -> None:
    payload = b"".join(
        [
            command("SET", "s", "v"),
            command("LPUSH", "s", "x"),  # WRONGTYPE, in the middle
            command("HSET", "h", "a", "1", "b", "2"),
            command("HGETALL", "h"),
            command("HGETALL", "missing"),
            command("INCR", "s"),  # ERR not an integer
            command("GET", "s"),
        ]
    )
    replies = await wire.roundtrip(payload, 7)

    assert replies[0] == "OK"
    assert isinstance(replies[1], RedisReplyError) and replies[1].code == "WRONGTYPE"
    assert replies[2] == 2
    assert replies[3] == ["a", "1", "b", "2"]
    assert replies[4] == []
    assert isinstance(replies[5], RedisReplyError) and replies[5].code == "ERR"
    assert replies[6] == "v"
    # the connection stays in step after error replies
    assert await wire.roundtrip(command("ECHO", "next"), 1) == ["next"]


async def test_transaction_with_a_queueing_error_is_aborted(
    wire: Wire, admin: aioredis.Redis
) -> None:
    payload = b"".join(
        [
            command("MULTI"),
            command("SET", "a", "1"),
            command("SET", "b"),  # wrong arity: refused while queueing
            command("SET", "c", "3"),
            command("EXEC"),
        ]
    )
    replies = await wire.roundtrip(payload, 5)

    assert replies[:2] == ["OK", "QUEUED"]
    assert isinstance(replies[2], RedisReplyError) and replies[2].code == "ERR"
    assert replies[3] == "QUEUED"
    assert isinstance(replies[4], RedisReplyError) and replies[4].code == "EXECABORT"
    assert await admin.exists("a", "c") == 0


async def test_transaction_runtime_error_is_inside_execs_reply(wire: Wire) -> None:
    await wire.roundtrip(command("SET", "s", "v"), 1)
    payload = command("MULTI") + command("LPUSH", "s", "x") + command("SET", "t", "1")
    replies = await wire.roundtrip(payload + command("EXEC"), 4)

    executed = replies[3]
    assert isinstance(executed, list)
    assert isinstance(executed[0], RedisReplyError) and executed[0].code == "WRONGTYPE"
    assert executed[1] == "OK"


async def test_non_utf8_bytes_decode_with_replacement(wire: Wire) -> None:
    await wire.roundtrip(command("HSET", "h", "price", b"\xff\xfe1.5"), 1)

    assert await wire.roundtrip(command("HGETALL", "h"), 1) == [["price", "\ufffd\ufffd1.5"]]


# -- handshake -----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_handshake_selects_the_database_and_names_the_connection(
    transport: str, redis_server_factory: Callable[..., EmbeddedRedis]
) -> None:
    server = redis_server_factory(port=0 if transport == "tcp" else None)
    url = server.url.replace("/0", "/3") if transport == "tcp" else server.url + "?db=3"
    wire = Wire(endpoint_from_url(url), name="harvest-db-test")
    try:
        await wire.roundtrip(command("SET", "where", "db3"), 1)
        (info,) = await wire.roundtrip(command("CLIENT", "INFO"), 1)
    finally:
        wire.close()

    assert isinstance(info, str)
    assert " db=3 " in info and " name=harvest-db-test " in info
    assert server.command("GET", "where") is None  # the fixture's command() uses db 0


async def test_password_from_the_url_or_given_separately(
    fresh_redis_server: EmbeddedRedis,
) -> None:
    server = fresh_redis_server
    server.command("CONFIG", "SET", "requirepass", "s3cret")
    url = server.url
    separate = Wire(endpoint_from_url(url, "s3cret"), name="t")
    try:
        assert await separate.roundtrip(command("PING"), 1) == ["PONG"]
        wrong = Wire(endpoint_from_url(url, "wrong"), name="t")
        with pytest.raises(AuthenticationFailed):
            await wrong.roundtrip(command("PING"), 1)
        missing = Wire(endpoint_from_url(url), name="t")  # NOAUTH on CLIENT SETNAME
        with pytest.raises(AuthenticationFailed):
            await missing.roundtrip(command("PING"), 1)
    finally:
        await separate.roundtrip(command("CONFIG", "SET", "requirepass", ""), 1)
        separate.close()


async def test_acl_user_in_the_url_and_replies_refused_by_acl(
    redis_server_factory: Callable[..., EmbeddedRedis],
) -> None:
    server = redis_server_factory(port=0)
    server.command("ACL", "SETUSER", "reader", "on", ">pw", "~*", "+@all", "-set")
    host_port = server.url.removeprefix("redis://")
    wire = Wire(endpoint_from_url(f"redis://reader:pw@{host_port}"), name="t")
    try:
        (whoami, refused) = await wire.roundtrip(
            command("ACL", "WHOAMI") + command("SET", "k", "v"), 2
        )
    finally:
        wire.close()
    assert whoami == "reader"
    assert isinstance(refused, RedisReplyError) and refused.code == "NOPERM"

    wrong = Wire(endpoint_from_url(f"redis://reader:nope@{host_port}"), name="t")
    with pytest.raises(AuthenticationFailed):
        await wrong.roundtrip(command("PING"), 1)


async def test_unreachable_server_is_unavailable_not_an_auth_error(tmp_path: Path) -> None:
    wire = Wire(endpoint_from_url(f"unix://{tmp_path}/nothing.sock"), name="t")
    with pytest.raises(RedisUnavailable) as caught:
        await wire.roundtrip(command("PING"), 1)
    assert not isinstance(caught.value, AuthenticationFailed | WriteUncertain)


async def test_connect_timeout_covers_a_server_that_never_answers() -> None:
    with socket.socket() as silent:  # accepts (backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        url = f"redis://127.0.0.1:{port}/0?socket_connect_timeout=0.2"
        with pytest.raises(RedisUnavailable, match=r"no connection within 0\.2 s"):
            await Wire(endpoint_from_url(url), name="t").roundtrip(command("PING"), 1)


# -- failures: the next round trip gets a new connection and only its own replies ----------


async def test_timeout_closes_the_connection_and_a_late_reply_is_never_read(
    fresh_redis_server: EmbeddedRedis,
) -> None:
    wire = Wire(endpoint_from_url(fresh_redis_server.url), name="t", timeout=0.5)
    try:
        await wire.roundtrip(command("PING"), 1)
        # the next round trip starts halfway through the PING's deadline: its own
        # deadline counts from its start, not from the earlier one's
        await anyio.sleep(0.25)
        os.kill(fresh_redis_server.pid, signal.SIGSTOP)
        try:
            started = anyio.current_time()
            with anyio.fail_after(5), pytest.raises(ReplyTimeout, match=r"within 0\.5 s"):
                await wire.roundtrip(command("ECHO", "late"), 1)
            assert anyio.current_time() - started >= 0.5
        finally:
            os.kill(fresh_redis_server.pid, signal.SIGCONT)
        assert wire.fresh
        assert await wire.roundtrip(command("ECHO", "mine"), 1) == ["mine"]
    finally:
        wire.close()


async def test_connection_killed_while_idle_is_replaced_without_an_error(
    wire: Wire, admin: aioredis.Redis
) -> None:
    first = await client_id(wire)
    await admin.client_kill_filter(_id=first)
    await until(lambda: wire.fresh)

    assert await client_id(wire) != first


async def test_connection_killed_mid_roundtrip_is_an_uncertain_outcome(
    wire: Wire, admin: aioredis.Redis
) -> None:
    blocked = await client_id(wire)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_kill_when_blocked, admin, blocked)
        with pytest.raises(WriteUncertain) as caught:
            await wire.roundtrip(command("BLPOP", "never", "0"), 1)
    assert not isinstance(caught.value, ReplyTimeout)
    assert await client_id(wire) != blocked


async def test_cancelled_roundtrip_leaves_no_stale_reply(wire: Wire, admin: aioredis.Redis) -> None:
    blocked = await client_id(wire)
    async with anyio.create_task_group() as tg:
        tg.start_soon(wire.roundtrip, command("BLPOP", "queue", "0"), 1)
        await until(lambda: _blocked(admin, blocked))
        tg.cancel_scope.cancel()  # while BLPOP waits for its reply

    # the blocked connection is gone: the pushed value stays in the list, and the next
    # request reads its own reply, not the BLPOP's
    await until(lambda: _gone(admin, blocked))
    await admin.lpush("queue", "x")
    assert await wire.roundtrip(command("ECHO", "mine"), 1) == ["mine"]
    assert await admin.llen("queue") == 1


async def test_overlapping_roundtrips_are_refused(wire: Wire, admin: aioredis.Redis) -> None:
    blocked = await client_id(wire)
    async with anyio.create_task_group() as tg:
        tg.start_soon(wire.roundtrip, command("BLPOP", "q", "0"), 1)
        await until(lambda: _blocked(admin, blocked))
        with pytest.raises(RuntimeError, match="another round trip"):
            await wire.roundtrip(command("PING"), 1)
        tg.cancel_scope.cancel()


# -- subscriber -----------------------------------------------------------------------------


async def test_subscriber_receives_notifications_in_order_and_fails_clearly_when_killed(
    redis_url: str, wire: Wire, admin: aioredis.Redis
) -> None:
    subscriber = await Subscriber.open(
        endpoint_from_url(redis_url), ["__keyspace@0__:in:*"], name="wire-notify"
    )
    try:
        writes = b"".join(command("HSET", f"in:{i}", "f", "1") for i in range(2000))
        await wire.roundtrip(writes + command("HSET", "other", "f", "1"), 2001)
        channels: list[str] = []
        async for batch in subscriber:
            channels += [message[2] for message in batch if message[0] == "pmessage"]
            if len(channels) >= 2000:
                break
        assert channels == [f"__keyspace@0__:in:{i}" for i in range(2000)]

        await admin.client_kill_filter(_type="pubsub")
        with pytest.raises(RedisUnavailable, match="subscription lost"):
            await subscriber.read_batch()
    finally:
        subscriber.close()


async def test_subscriber_backlog_beyond_its_bound_arrives_whole_and_in_order(
    fresh_redis_server: EmbeddedRedis, admin_of: Callable[[str], aioredis.Redis]
) -> None:
    """More messages than the subscriber buffers (it pauses reading): none lost."""
    count = 20_000
    url = fresh_redis_server.url
    fresh_redis_server.command("CONFIG", "SET", "client-output-buffer-limit", "pubsub 0 0 0")
    subscriber = await Subscriber.open(
        endpoint_from_url(url), ["__keyspace@0__:*"], name="t", backlog=100
    )
    script = "for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'k' .. i, i) end"
    try:
        await admin_of(url).eval(script, 0, count)
        seen: list[str] = []
        with anyio.fail_after(10):
            while len(seen) < count:
                seen += [message[2] for message in await subscriber.read_batch()]
    finally:
        subscriber.close()
    assert seen == [f"__keyspace@0__:k{i}" for i in range(1, count + 1)]


async def test_subscriber_refused_by_acl_is_unavailable(
    redis_server_factory: Callable[..., EmbeddedRedis],
) -> None:
    server = redis_server_factory()
    server.command("ACL", "SETUSER", "some", "on", ">pw", "~*", "resetchannels", "&allowed:*")
    server.command("ACL", "SETUSER", "some", "+@all")
    endpoint = endpoint_from_url(server.url.replace("unix://", "unix://some:pw@"))
    with pytest.raises(RedisUnavailable, match="NOPERM"):
        await Subscriber.open(endpoint, ["allowed:*", "__keyspace@0__:*"], name="t")


# -- TLS ------------------------------------------------------------------------------------


async def test_tls_with_verified_server_and_client_certificates(
    redis_server_factory: Callable[..., EmbeddedRedis], tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    port = _free_port()
    try:
        redis_server_factory(extra_args=tls_args(port, cert, key))
    except RedisServerError as exc:
        pytest.skip(f"this server has no TLS support: {str(exc).splitlines()[0]}")
    base = f"rediss://127.0.0.1:{port}/0"
    with_certs = f"{base}?{tls_query(cert, key)}"
    wire = Wire(endpoint_from_url(with_certs), name="t")
    try:
        assert await wire.roundtrip(command("PING"), 1) == ["PONG"]
    finally:
        wire.close()

    unverified = Wire(endpoint_from_url(f"{base}?ssl_certfile={cert}&ssl_keyfile={key}"), name="t")
    with pytest.raises(RedisUnavailable, match="SSLCertVerificationError"):
        await unverified.roundtrip(command("PING"), 1)


# -- helpers --------------------------------------------------------------------------------


async def _gone(admin: aioredis.Redis, client: int) -> bool:
    listing: list[dict[str, str]] = await admin.client_list()
    return all(int(entry["id"]) != client for entry in listing)


async def _blocked(admin: aioredis.Redis, client: int) -> bool:
    """Whether `client` waits in BLPOP (so its request was sent and read)."""
    listing: list[dict[str, str]] = await admin.client_list()
    return any(int(e["id"]) == client and e["cmd"] == "blpop" for e in listing)


async def _kill_when_blocked(admin: aioredis.Redis, client: int) -> None:
    await until(lambda: _blocked(admin, client))
    await admin.client_kill_filter(_id=client)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
