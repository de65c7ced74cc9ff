"""Proposal writes that Redis refuses (OOM) or whose outcome is unknown (a server stall).

The service runs in-process against a private server (it is reconfigured or frozen);
both server flavours.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
import redis.asyncio as aioredis

from harvest_async.core.engine import Engine, EngineConfig
from harvest_async.core.input_hashes import SymbolInputs
from harvest_async.core.ports import Output
from harvest_async.errors import WriteRefused
from harvest_async.redis_io.sink import RedisSink
from harvest_async.redis_io.wire import endpoint_from_url
from harvest_async.tools.embedded_server import EmbeddedRedis
from tests.support.live import (
    KEYS,
    SYM,
    audit,
    connected,
    make_settings,
    market,
    messages,
    passes_above,
    position,
    proposal,
    proposals,
    put,
    put_inputs,
    running,
    wait_action,
    wait_for,
)

REFUSED = "Redis refuses proposal writes"


def assert_no_repeated_decision(entries: list[dict[str, str]]) -> None:
    """Per symbol: seq strictly increasing, and no publish that repeats the previous
    decision (same plan_id) except a heartbeat."""
    last: dict[str, dict[str, str]] = {}
    for entry in entries:
        symbol = entry["symbol"]
        before = last.get(symbol)
        if before is not None:
            assert int(entry["seq"]) > int(before["seq"]), (before, entry)
            if entry["event"] == "publish" and before["event"] == "publish":
                repeated = entry["plan_id"] == before["plan_id"]
                assert not repeated or entry["trigger"] == "heartbeat", (before, entry)
        last[symbol] = entry


# -- refused writes ------------------------------------------------------------------------


async def test_refused_writes_are_one_outage_that_converges_when_cleared(
    fresh_redis_server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Out of memory (noeviction): retractions and publishes are refused for a while. The
    service keeps running, says so once, and once memory is back every symbol converges:
    the open ones show their latest inputs, the closed ones are retracted."""
    caplog.set_level(logging.INFO, logger="harvest_async")
    symbols = [f"S{i:02d}USDT" for i in range(50)]
    closed, changed = symbols[:10], symbols[10:]
    url = fresh_redis_server.url
    async with (
        connected(url) as client,
        running(make_settings(url, SYMBOLS=",".join(symbols))) as runner,
    ):
        for symbol in symbols:  # a 1 % stop: PARTIAL_50
            await put_inputs(client, symbol, pnl=5.0, stop="0.01")

        async def all_published() -> bool:
            found = await proposals(client, symbols)
            return all(f.get("harvest_action") == "PARTIAL_50" for f in found.values())

        await wait_for(all_published, "the first publishes")
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", "1")
        # a DEL and an HDEL are still allowed: positions close (a retraction to write) and
        # risk proposals lose their stop (fallback 2 %: PARTIAL_25, a publish to write)
        for symbol in closed:
            await client.delete(KEYS.position(symbol))
        for symbol in changed:
            await client.hdel(KEYS.risk(symbol), "stop_dist_pct")  # type: ignore[misc]
        await wait_for(lambda: anyio.to_thread.run_sync(messages, caplog, REFUSED), "the refusal")
        await anyio.sleep(3.0)  # a few seconds of refusal, retried in the background
        assert await all_published()  # nothing got through
        writes = runner.writes
        await client.config_set("maxmemory", "0")

        async def converged() -> bool:
            found = await proposals(client, symbols)
            return all(not found[s] for s in closed) and all(
                found[s].get("harvest_action") == "PARTIAL_25"
                and found[s].get("risk_source") == "fallback"
                for s in changed
            )

        await wait_for(converged, "every symbol to converge", limit=15.0)
        assert runner.writes > writes
        entries = await audit(client)
    # one line when it started (with the server's words), one when it cleared
    about_writes = [r for r in caplog.records if "proposal write" in r.getMessage()]
    assert [r.levelno for r in about_writes] == [logging.WARNING, logging.INFO], [
        r.getMessage() for r in about_writes
    ]
    assert "OOM command not allowed" in about_writes[0].getMessage()
    assert "cleared" in about_writes[1].getMessage()
    assert not messages(caplog, "resync (redis error)")  # Redis was up: no resync for it
    assert_no_repeated_decision(entries)
    for symbol in closed:
        events = [e["event"] for e in entries if e["symbol"] == symbol]
        assert events == ["publish", "retract"], (symbol, events)
    for symbol in changed:
        actions = [e["harvest_action"] for e in entries if e["symbol"] == symbol]
        assert actions == ["PARTIAL_50", "PARTIAL_25"], (symbol, actions)


# -- a server stall mid-write --------------------------------------------------------------


async def test_a_write_in_flight_during_a_stall_lands_once(
    fresh_redis_server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """The server freezes (SIGSTOP) with a transaction in flight, for longer than the
    write timeout; it runs when the server resumes. The service must recognise it as
    landed (by its seq), not append the same decision a second time."""
    caplog.set_level(logging.INFO, logger="harvest_async")
    server = fresh_redis_server
    floor = 1.0
    settings = make_settings(server.url, PUBLISH_INTERVAL_SEC=str(floor), REDIS_TIMEOUT_SEC="0.3")
    async with connected(server.url) as client, running(settings) as runner:
        await put_inputs(client, SYM, pnl=0.0)
        first = await wait_for(lambda: proposal(client), "the first publish")
        # a change inside the floor: published exactly at the window's end, straight from
        # the engine's timer (no read before it), so the write is what meets the freeze
        await put(client, KEYS.position(SYM), position(9.0))
        window_end = float(first["ts_epoch"]) + floor
        await anyio.sleep(window_end - 0.15 - time.time())
        os.kill(server.pid, signal.SIGSTOP)
        try:
            await anyio.sleep(1.5)  # the write, its outcome check and a retry time out
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert messages(caplog, "transaction outcome unknown")  # the freeze met the write
        passes = runner.passes
        await wait_for(passes_above(runner, passes), "the resync after the outage", limit=5.0)
        await put(client, KEYS.position(SYM), position(13.0))
        await wait_action(client, "PARTIAL_75", limit=3.0)
        entries = await audit(client)
    assert_no_repeated_decision(entries)
    assert [e["harvest_action"] for e in entries] == ["NONE", "PARTIAL_50", "PARTIAL_75"]
    assert not messages(caplog, "not the last one written")


# -- what the sink reports about a refused transaction --------------------------------------


def outputs_for(*symbols: str, pnl: float = 5.0) -> list[Output]:
    engine = Engine(EngineConfig(symbols=symbols))
    now = time.time()
    outs = []
    for symbol in symbols:
        engine.observe(
            SymbolInputs(
                symbol,
                marketstate=market(),
                risk={"stop_dist_pct": "0.02"},
                position=position(pnl, symbol),
            )
        )
        out = engine.evaluate(symbol, now)
        assert out is not None
        outs.append(out)
    return outs


@asynccontextmanager
async def sink_for(url: str) -> AsyncIterator[tuple[RedisSink, aioredis.Redis]]:
    """A sink writing to `url`, and a redis-py client to look at what it did."""
    sink = RedisSink(endpoint_from_url(url), KEYS)
    try:
        async with connected(url) as client:
            yield sink, client
    finally:
        sink.close()


async def test_sink_out_of_memory_refuses_all_and_applies_nothing(
    fresh_redis_server: EmbeddedRedis,
) -> None:
    url = fresh_redis_server.url
    async with sink_for(url) as (sink, client):
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", "1")
        with pytest.raises(WriteRefused, match="OOM command not allowed") as info:
            await sink.write(outputs_for("AUSDT", "BUSDT"))
        await client.config_set("maxmemory", "0")
        refused = info.value
        assert (refused.landed, refused.touched, refused.collateral) == ((), (), ())
        assert not await client.exists(KEYS.stream, KEYS.proposal("AUSDT"))
        await sink.write(outputs_for("AUSDT"))  # the connection is still in order
        assert await client.hget(KEYS.proposal("AUSDT"), "harvest_action") == "PARTIAL_25"


async def test_sink_one_refused_key_leaves_the_others_as_collateral(redis_url: str) -> None:
    """NOPERM on one proposal key aborts the transaction; the outputs Redis had accepted
    are reported as collateral (to be written again at once), not as refused."""
    async with connected(redis_url) as admin:
        await admin.execute_command(
            "ACL", "SETUSER", "w", "on", ">pw", "+@all", f"~{KEYS.proposal('AUSDT')}",
            f"~{KEYS.stream}",
        )  # fmt: skip
        try:
            async with sink_for(redis_url.replace("unix://", "unix://w:pw@")) as (sink, _c):
                a, b = outputs_for("AUSDT", "BUSDT")
                with pytest.raises(WriteRefused, match="NOPERM") as info:
                    await sink.write([a, b])
                assert info.value.collateral == (a,)
                assert (info.value.landed, info.value.touched) == ((), ())
                assert not await admin.exists(KEYS.proposal("AUSDT"), KEYS.stream)
                await sink.write(info.value.collateral)
            assert await admin.hget(KEYS.proposal("AUSDT"), "seq") == str(a.seq)
        finally:
            await admin.execute_command("ACL", "DELUSER", "w")


async def test_sink_a_refused_audit_entry_changes_nothing(redis_url: str) -> None:
    """XADD refused (the stream key holds a string): the write script appends the audit
    entry first, so the hash is not touched; the output is refused, nothing more.
    (With MULTI/EXEC the hash was replaced all the same: Redis does not roll back.)"""
    async with sink_for(redis_url) as (sink, client):
        (before,) = outputs_for("AUSDT", pnl=0.0)
        await sink.write([before])
        await client.delete(KEYS.stream)
        await client.set(KEYS.stream, "not a stream")
        (out,) = outputs_for("AUSDT")
        with pytest.raises(WriteRefused, match="WRONGTYPE") as info:
            await sink.write([out])
        refused = info.value
        assert (refused.landed, refused.touched, refused.collateral) == ((), (), ())
        assert await client.hgetall(KEYS.proposal("AUSDT")) == before.fields  # type: ignore[union-attr,misc]
