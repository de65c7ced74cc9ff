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
