"""Redis down for a while: the log says so once (and reminds), every loop backs off, the
resync counter counts resyncs, and the proposals converge once Redis is back.

`HARVEST_TEST_OUTAGE_SEC` sets the outage's length (8 s by default; the issue's 30 s
measurement is `HARVEST_TEST_OUTAGE_SEC=30`, and bench/outage.py measures a minute).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter

import anyio
import pytest

from harvest_async.core.keys import Keys
from harvest_async.core.ports import NullHooks
from harvest_async.tools.embedded_server import EmbeddedRedis
from tests.support.live import (
    connected,
    make_settings,
    put_inputs,
    running,
    wait_action,
    wait_for,
)

OUTAGE_SEC = float(os.environ.get("HARVEST_TEST_OUTAGE_SEC", "8"))
REMIND_SEC = 3.0
KEYS = Keys()


class Resyncs(NullHooks):
    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()

    def on_resync(self, reason: str) -> None:
        self.reasons[reason] += 1


def _lines(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == level and r.name.startswith("harvest_async") and text in r.getMessage()
    ]


async def test_an_outage_is_one_warning_reminders_and_one_info_with_its_duration(
    fresh_redis_server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="harvest_async")
    server = fresh_redis_server
    settings = make_settings(
        server.url,
        SYMBOLS="BTCUSDT,ETHUSDT",
        LIVENESS_TTL_SEC="1.5",  # a beat every 0.5 s: the canary and the liveness loop busy
        CANARY_TIMEOUT_SEC="0.5",
        OUTAGE_REMINDER_SEC=str(REMIND_SEC),
    )
    hooks = Resyncs()
    async with connected(server.url) as client, running(settings, hooks=hooks):
        await put_inputs(client, "BTCUSDT", pnl=5.0)
        await put_inputs(client, "ETHUSDT", pnl=9.0)
        await wait_action(client, "PARTIAL_25", "BTCUSDT")
        await wait_action(client, "PARTIAL_50", "ETHUSDT")
        before = len(caplog.records)
        resyncs_before = sum(hooks.reasons.values())

        await anyio.to_thread.run_sync(server.kill)
        await anyio.sleep(OUTAGE_SEC)
        # back without its data (no persistence); the producers write their inputs again
        await anyio.to_thread.run_sync(server.start)
        back = time.perf_counter()
        await put_inputs(client, "BTCUSDT", pnl=5.0)
        await put_inputs(client, "ETHUSDT", pnl=9.0)
        await wait_action(client, "PARTIAL_25", "BTCUSDT", limit=15.0)
        await wait_action(client, "PARTIAL_50", "ETHUSDT", limit=5.0)
        returned_after = time.perf_counter() - back
        await wait_for(
            lambda: anyio.to_thread.run_sync(_lines, caplog, logging.INFO, "available again after"),
            "the end of the outage",
            limit=15.0,
        )

    records = caplog.records[before:]
    loud = [r for r in records if r.levelno >= logging.INFO and r.name.startswith("harvest")]
    started = _lines(caplog, logging.WARNING, "unavailable (")
    reminders = _lines(caplog, logging.WARNING, "still unavailable after")
    ended = _lines(caplog, logging.INFO, "available again after")
    text = "\n".join(f"{r.levelname} {r.getMessage()}" for r in loud)
    assert len(started) == 1, text
    assert 1 <= len(reminders) <= OUTAGE_SEC // REMIND_SEC + 1, text
    assert len(ended) == 1, text
    duration = float(ended[0].split("after ")[1].split(" s")[0])
    assert OUTAGE_SEC - 0.5 <= duration <= OUTAGE_SEC + 15, ended
    # nothing else is repeated: no per-attempt warnings, no wrong canary lines
    assert not [m for m in (r.getMessage() for r in loud) if "canary" in m], text
    assert len(loud) <= 12 + OUTAGE_SEC // REMIND_SEC, text
    # the resync counter counts resyncs (a few at most), not the attempts (~2 a second)
    resyncs = sum(hooks.reasons.values()) - resyncs_before
    assert 1 <= resyncs <= 3, hooks.reasons
    assert returned_after < 12.0


# -- Redis loses its data ------------------------------------------------------------------


@pytest.mark.parametrize("identical", [True, False], ids=["same-inputs", "newer-inputs"])
@pytest.mark.parametrize("symbols", ["BTCUSDT,ETHUSDT", "*"])
@pytest.mark.parametrize("notify", [True, False], ids=["notify", "poll"])
async def test_data_lost_without_a_disconnect_every_proposal_comes_back(
    redis_url: str,
    identical: bool,
    symbols: str,
    notify: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """FLUSHALL (or a failover to an empty replica) with the inputs written back at once:
    no reconnect and no notification says the proposals are gone, and the inputs look
    unchanged (or change nothing material), so nothing was rewritten until the heartbeat.
    The service's own liveness key vanishing says so: a resync that checks the proposals."""
    caplog.set_level(logging.INFO, logger="harvest_async")
    settings = make_settings(
        redis_url, SYMBOLS=symbols, LIVENESS_TTL_SEC="1.5", MAX_PUBLISH_AGE_SEC="60"
    )
    async with connected(redis_url) as client:
        if not notify:
            await client.config_set("notify-keyspace-events", "")
        async with running(settings):
            await put_inputs(client, "BTCUSDT", pnl=5.0)
            await put_inputs(client, "ETHUSDT", pnl=9.0)
            await wait_action(client, "PARTIAL_25", "BTCUSDT")
            await wait_action(client, "PARTIAL_50", "ETHUSDT")
            inputs = {}
            for symbol in ("BTCUSDT", "ETHUSDT"):
                for key in (KEYS.marketstate(symbol), KEYS.risk(symbol), KEYS.position(symbol)):
                    inputs[key] = await client.hgetall(key)
                if not identical:
                    inputs[KEYS.position(symbol)]["ts_epoch"] = repr(round(time.time(), 3))
            lost = time.perf_counter()
            async with client.pipeline(transaction=True) as pipe:
                pipe.flushall()
                for key, fields in inputs.items():
                    pipe.hset(key, mapping=fields)
                await pipe.execute()
            await wait_action(client, "PARTIAL_25", "BTCUSDT", limit=5.0)
            await wait_action(client, "PARTIAL_50", "ETHUSDT", limit=2.0)
            assert time.perf_counter() - lost < 3.0  # a beat (0.5 s) and a resync, not 60 s
    said = [m for m in (r.getMessage() for r in caplog.records) if "not the last ones" in m]
    assert said == [
        "resync (liveness key lost): 2 proposals in Redis were not the last ones written "
        "(lost with the server's data, deleted or replaced): 2 written again"
    ]


async def test_restarted_empty_the_log_says_what_waits_for_its_inputs(
    fresh_redis_server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """A restart without persistence before the producers write again: the resync finds
    the proposals gone and says they come back with their inputs, which they do."""
    caplog.set_level(logging.INFO, logger="harvest_async")
    server = fresh_redis_server
    settings = make_settings(server.url, SYMBOLS="BTCUSDT,ETHUSDT", LIVENESS_TTL_SEC="1.5")
    async with connected(server.url) as client, running(settings):
        await put_inputs(client, "BTCUSDT", pnl=5.0)
        await put_inputs(client, "ETHUSDT", pnl=9.0)
        await wait_action(client, "PARTIAL_25", "BTCUSDT")
        await wait_action(client, "PARTIAL_50", "ETHUSDT")
        await anyio.to_thread.run_sync(server.restart)
        await wait_for(
            lambda: anyio.to_thread.run_sync(_lines, caplog, logging.INFO, "not the last ones"),
            "the resync after the restart",
            limit=15.0,
        )
        await put_inputs(client, "BTCUSDT", pnl=5.0)
        await put_inputs(client, "ETHUSDT", pnl=9.0)
        await wait_action(client, "PARTIAL_25", "BTCUSDT", limit=3.0)
        await wait_action(client, "PARTIAL_50", "ETHUSDT", limit=3.0)
    (said,) = _lines(caplog, logging.INFO, "not the last ones")
    assert said.endswith(
        ": 2 proposals in Redis were not the last ones written (lost with the server's "
        "data, deleted or replaced): 0 written again; 2 not: their inputs are absent or "
        "invalid now, they are written again when their inputs are"
    ), said
