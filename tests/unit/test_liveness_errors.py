"""`read_publishers` on an error reply: a read that failed is not a key found missing
(a publisher group member would otherwise take a live peer for gone)."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import ResponseError

from harvest_async.core.keys import Keys
from harvest_async.errors import RedisUnavailable
from harvest_async.redis_io.liveness import read_publishers


class _Pipe:
    def __init__(self, replies: list[Any]) -> None:
        self.replies = replies

    async def __aenter__(self) -> _Pipe:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def hgetall(self, key: str) -> None:
        pass

    def pttl(self, key: str) -> None:
        pass

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        return self.replies


class _Client:
    def __init__(self, replies: list[Any]) -> None:
        self.replies = replies

    def pipeline(self, transaction: bool = True) -> _Pipe:
        return _Pipe(self.replies)


async def test_an_error_reply_is_a_failed_read() -> None:
    down = ResponseError("CLUSTERDOWN The cluster is down")
    with pytest.raises(RedisUnavailable, match="CLUSTERDOWN"):
        await read_publishers(_Client([down, -2]), Keys(), names=["a"])  # type: ignore[arg-type]


async def test_a_key_of_another_type_is_no_publisher() -> None:
    wrong = ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    found = await read_publishers(_Client([wrong, -1]), Keys(), names=["a"])  # type: ignore[arg-type]
    assert found == []
    live = {"host": "h", "pid": "1", "version": "v", "symbols": "2"}
    found = await read_publishers(_Client([live, 5000]), Keys(), names=["a"])  # type: ignore[arg-type]
    assert [p.instance for p in found] == ["a"]
