"""Input size limits (MAX_INPUT_FIELDS, MAX_INPUT_VALUE_BYTES) on real servers.

A 100k-field position hash or a 10 MB value is invalid input, refused by the read script
on the server before it crosses the wire: the symbol is retracted with a reason naming
the key, the field and the size, the other symbols' latency stays normal and the engine
holds nothing big. The service runs in-process (`service.serve`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from harvest_async.clock import SystemClock
from harvest_async.config import Settings
from harvest_async.core.input_hashes import OVERSIZED, NoAdvice
from harvest_async.core.inputs import parse_position
from harvest_async.redis_io.client import client_for
from harvest_async.redis_io.input_rows import ServerRows
from harvest_async.redis_io.inputs_io import InputLimits, read_hashes
from harvest_async.redis_io.reader import RedisInputReader
from harvest_async.redis_io.wire import endpoint_from_url
from harvest_async.replay.recorder import Recorder
from harvest_async.service.runner import Runner
from harvest_async.tools.doctor import run_doctor
from harvest_async.tools.embedded_server import EmbeddedRedis
from harvest_async.tools.server_binaries import ServerBinary
from tests.support.live import (
    KEYS,
    connected,
    position,
    proposal,
    put,
    put_inputs,
    running,
    shows_pnl,
    wait_for,
)
from tests.support.live import make_settings as service_settings

BIG = "BIGUSDT"
OTHER = "BTCUSDT"
TEN_MB = 10 * 2**20


async def last_retraction(client: aioredis.Redis, symbol: str) -> dict[str, str]:
    entries: Any = await client.xrevrange(KEYS.stream, count=50)
    for _id, fields in entries:
        if fields.get("symbol") == symbol:
            return fields if fields.get("event") == "retract" else {}
    return {}


def make_settings(url: str, **env: str) -> Settings:
    return service_settings(url, SYMBOLS=f"{OTHER},{BIG}", INSTANCE="limits", **env)


def largest_value(runner: Runner, symbol: str) -> int:
    """The longest input value the engine holds for `symbol`."""
    held = runner.engine.inputs(symbol)
    assert held is not None
    hashes = (held.marketstate, held.risk, held.position)
    return max(len(v) for fields in hashes if fields for v in fields.values())


async def other_symbol_latency(client: aioredis.Redis, pnl: float) -> float:
    """Touch the big hash and change the other symbol in the same breath (so both are
    read in one round); seconds until the other symbol's proposal shows the change."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.hset(KEYS.position(BIG), "touched", repr(pnl))
        pipe.hset(KEYS.position(OTHER), mapping=position(pnl))  # type: ignore[arg-type]
        await pipe.execute()
    sent = time.perf_counter()
    await wait_for(lambda: shows_pnl(client, pnl, OTHER), f"{OTHER} at pnl {pnl}")
    return time.perf_counter() - sent


async def test_a_huge_hash_and_a_huge_value_are_retracted_and_not_kept(redis_url: str) -> None:
    async with connected(redis_url) as client, running(make_settings(redis_url)) as runner:
        for symbol in (OTHER, BIG):
            await put_inputs(client, symbol)
        for symbol in (OTHER, BIG):
            await wait_for(lambda s=symbol: shows_pnl(client, 0.0, s), f"{symbol} published")

        # 100k fields: retracted, saying which key and how many fields
        await client.hset(
            KEYS.position(BIG),
            mapping={f"extra{i}": "1" for i in range(100_000)},  # type: ignore[arg-type]
        )
        retraction = await wait_for(lambda: last_retraction(client, BIG), "the retraction")
        fields = 100_000 + len(position())
        assert retraction["reason"] == (
            f"invalid_position: {KEYS.position(BIG)} has {fields} fields "
            "(limit MAX_INPUT_FIELDS=256)"
        )
        assert not await proposal(client, BIG)
        # touched twice a second, it does not slow the other symbol down (it was read
        # in full each time: ~0.1-0.3 s per touch)
        latencies = []
        for i in range(1, 7):
            latencies.append(await other_symbol_latency(client, float(i)))
            await anyio.sleep(0.5)
        assert max(latencies) < 0.1, latencies
        assert largest_value(runner, BIG) < 200  # only the reason is held

        # valid again, then a 10 MB value in a field the codec reads
        await put(client, KEYS.position(BIG), position(1.0))
        await wait_for(lambda: shows_pnl(client, 1.0, BIG), f"{BIG} published again")
        await client.hset(KEYS.position(BIG), "unrealized_pnl", "9" * TEN_MB)
        retraction = await wait_for(lambda: last_retraction(client, BIG), "the retraction")
        assert retraction["reason"] == (
            f"invalid_position: {KEYS.position(BIG)} field unrealized_pnl is {TEN_MB} bytes "
            "(limit MAX_INPUT_VALUE_BYTES=4096)"
        )
        assert largest_value(runner, BIG) < 200

        # a 10 MB value in a field the codec does not read is never read at all
        await put(client, KEYS.position(BIG), {**position(2.0), "notes": "x" * TEN_MB})
        await wait_for(lambda: shows_pnl(client, 2.0, BIG), f"{BIG} published again")
        assert largest_value(runner, BIG) < 200
        assert await shows_pnl(client, 6.0, OTHER)  # and the other one never stopped


async def test_the_read_script_tells_absent_empty_oversized_and_wrong_type_apart(
    redis_url: str,
) -> None:
    limits = InputLimits(fields=20, value_bytes=100)
    client = client_for(redis_url)
    try:
        async with connected(redis_url) as admin:
            await admin.hset(KEYS.position("EMPTY"), "unread", "1")
            await admin.hset(
                KEYS.position("WIDE"),
                mapping={f"f{i}": "1" for i in range(21)},  # type: ignore[arg-type]
            )
            pos = position(symbol=None)  # only fields the service reads
            await admin.hset(KEYS.position("LONGV"), mapping={**pos, "side": "L" * 101})
            await admin.hset(KEYS.position("UNREAD"), mapping={**pos, "notes": "x" * 500})
            await admin.set(KEYS.position("STRING"), "not a hash")
            reader = RedisInputReader(client, KEYS, endpoint_from_url(redis_url), limits=limits)
            names = ["ABSENT", "EMPTY", "WIDE", "LONGV", "UNREAD", "STRING"]
            got = {i.symbol: i.position for i in await reader.fetch(names)}
            assert got["ABSENT"] is None
            assert got["EMPTY"] == {}  # exists, none of the fields the codec reads
            empty = parse_position(got["EMPTY"], "EMPTY", needs_quantity=False)
            assert isinstance(empty, NoAdvice) and empty.detail == "side is missing"
            assert got["WIDE"] == {
                OVERSIZED: f"{KEYS.position('WIDE')} has 21 fields (limit MAX_INPUT_FIELDS=20)"
            }
            assert got["LONGV"] == {
                OVERSIZED: f"{KEYS.position('LONGV')} field side is 101 bytes "
                "(limit MAX_INPUT_VALUE_BYTES=100)"
            }
            assert got["UNREAD"] == pos  # the long unread field is not read
            wrong = parse_position(got["STRING"], "STRING", needs_quantity=False)
            assert isinstance(wrong, NoAdvice) and wrong.reason == "invalid_position"

            # whole hashes (record, doctor): the long unread field is left out
            whole = await read_hashes(admin, [("position", KEYS.position("UNREAD"))], limits, "all")
            assert whole == [pos]

            # the server forgets the script (SCRIPT FLUSH, a failover): loaded again
            await admin.script_flush()
            assert (await reader.fetch(["UNREAD"]))[0].position == pos
            await admin.script_flush()
            unread = [("position", KEYS.position("UNREAD"))]
            assert await read_hashes(admin, unread, limits, "all") == [pos]
            reader.close()
    finally:
        await client.aclose()


async def test_record_and_doctor_see_an_oversized_hash_as_the_service_does(
    redis_url: str,
) -> None:
    settings = make_settings(redis_url, MAX_INPUT_FIELDS="50")
    async with connected(redis_url) as client:
        other_market = await put_inputs(client, OTHER)
        await put_inputs(client, BIG)
        await client.hset(
            KEYS.position(BIG),
            mapping={f"extra{i}": "1" for i in range(60)},  # type: ignore[arg-type]
        )
        expected = (
            f"{KEYS.position(BIG)} has {60 + len(position())} fields (limit MAX_INPUT_FIELDS=50)"
        )
        recorder = Recorder(
            ServerRows(client, KEYS, InputLimits(fields=50)),
            KEYS,
            SystemClock(),
            symbols=settings.symbols,
        )
        _at, state = await recorder.snapshot()
        assert state[BIG].position == {OVERSIZED: expected}
        assert state[OTHER].marketstate == other_market  # whole hashes, unread fields too
        replayed = parse_position(state[BIG].position, BIG, needs_quantity=False)
        assert isinstance(replayed, NoAdvice)
        assert replayed.text() == f"invalid_position: {expected}"

        report = await run_doctor(settings, only=["inputs"])
        entry = report.checks[-1].details["per_symbol"][BIG]
        assert (entry["state"], entry["detail"]) == ("invalid_position", expected)


async def test_a_server_without_evalsha_ro_is_read_with_evalsha(
    redis_server_factory: Callable[..., EmbeddedRedis], redis_binary: ServerBinary
) -> None:
    """Redis 6.2 has no EVALSHA_RO: the service, `record` and the startup check use
    EVALSHA there (on newer servers simulated by renaming the command away)."""
    has_evalsha_ro = int(redis_binary.version.split(".")[0]) >= 7
    rename = ["--rename-command", "EVALSHA_RO", ""] if has_evalsha_ro else []
    server = redis_server_factory(extra_args=rename)
    async with connected(server.url) as client:
        with pytest.raises(ResponseError, match="unknown command"):
            await client.execute_command("EVALSHA_RO", "0" * 40, 0)
        await put_inputs(client, OTHER)
        await put_inputs(client, BIG)
        async with running(make_settings(server.url)):
            for symbol in (OTHER, BIG):
                await wait_for(lambda s=symbol: shows_pnl(client, 0.0, s), f"{symbol}")
            await client.hset(
                KEYS.position(BIG),
                mapping={f"extra{i}": "1" for i in range(300)},  # type: ignore[arg-type]
            )
            retraction = await wait_for(lambda: last_retraction(client, BIG), "the retraction")
            assert f"has {300 + len(position())} fields" in retraction["reason"]
        limits = InputLimits()
        assert await read_hashes(client, [("risk", KEYS.risk(OTHER))], limits, "all") == [
            {"stop_dist_pct": "0.02"}
        ]
