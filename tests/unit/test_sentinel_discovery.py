"""Asking sentinels for the primary (`redis_io.sentinel.ask_primary`), against fake
sentinels on loopback: in turn, the last one that answered first, a demoted primary's
name not believed unless every sentinel gives it."""

from __future__ import annotations

import socket

import pytest

from harvest_async.errors import RedisUnavailable
from harvest_async.redis_io.sentinel import ask_primary
from harvest_async.redis_io.wire_url import Sentinels
from tests.support.sentinel import FakeSentinel


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_asked_in_turn_the_one_that_answered_first_next_time() -> None:
    async with FakeSentinel(7001) as answering:
        sentinels = Sentinels((("127.0.0.1", closed_port()), ("127.0.0.1", answering.port)), "s")

        assert await ask_primary(sentinels, 2.0) == ("127.0.0.1", 7001)
        assert sentinels.first == 1
        answering.target = 7002
        assert await ask_primary(sentinels, 2.0) == ("127.0.0.1", 7002)


async def test_a_sentinel_naming_the_demoted_primary_is_passed_over() -> None:
    async with FakeSentinel(7001) as stale, FakeSentinel(7002) as current:
        sentinels = Sentinels((("127.0.0.1", stale.port), ("127.0.0.1", current.port)), "s")
        sentinels.demoted = ("127.0.0.1", 7001)

        assert await ask_primary(sentinels, 2.0) == ("127.0.0.1", 7002)
        current.target = 7001  # every sentinel names it: it is the primary again
        sentinels.first = 0
        assert await ask_primary(sentinels, 2.0) == ("127.0.0.1", 7001)


async def test_a_stale_answer_is_asked_last_next_time() -> None:
    async with FakeSentinel(7001) as stale, FakeSentinel(7002) as current:
        sentinels = Sentinels((("127.0.0.1", stale.port), ("127.0.0.1", current.port)), "s")

        assert await ask_primary(sentinels, 2.0, skip=0) == ("127.0.0.1", 7002)


async def test_no_sentinel_answers() -> None:
    sentinels = Sentinels((("127.0.0.1", closed_port()),), "svc")

    with pytest.raises(RedisUnavailable, match="no sentinel named the primary of 'svc'"):
        await ask_primary(sentinels, 0.5)
