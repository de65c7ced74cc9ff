"""The backoff helper: delays, jitter, cap; an outage logged once when it starts and once
when it clears."""

from __future__ import annotations

import logging

import anyio
import pytest

from harvest_async.backoff import Backoff, Outage, RedisOutage
from harvest_async.clock import FakeClock


def test_delays_double_up_to_the_cap_and_reset() -> None:
    backoff = Backoff(first=0.1, cap=1.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.1)


def test_jitter_only_shortens_a_delay() -> None:
    lowest = Backoff(first=1.0, cap=10.0, jitter=0.2, rng=lambda: 1.0)
    highest = Backoff(first=1.0, cap=10.0, jitter=0.2, rng=lambda: 0.0)
    for _ in range(10):
        low, high = lowest.next_delay(), highest.next_delay()
        assert low == pytest.approx(0.8 * high)
        assert high <= 10.0


def test_many_failures_do_not_overflow() -> None:
    backoff = Backoff(first=0.1, cap=10.0, jitter=0.0)
    for _ in range(2000):
        delay = backoff.next_delay()
    assert delay == 10.0


@pytest.mark.parametrize("first, cap, jitter", [(0, 1, 0), (2, 1, 0), (1, 2, 1.0)])
def test_bad_parameters_are_refused(first: float, cap: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="bad backoff"):
        Backoff(first=first, cap=cap, jitter=jitter)


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_clears(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    outage = Outage("Redis refuses X", logging.getLogger("t"), clock, Backoff(jitter=0.0))
    outage.recovered()  # nothing to clear
    assert not outage.active
    delays = []
    for _ in range(5):
        delays.append(outage.failed("OOM command not allowed"))
        clock.advance(delays[-1])
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])
    outage.recovered()
    outage.recovered()
    loud = [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    started = "Redis refuses X (OOM command not allowed); retrying with backoff (up to 10 s)"
    cleared = "Redis refuses X: cleared after 3.1 s (5 failed attempts)"
    assert loud == [(logging.WARNING, started), (logging.INFO, cleared)]
    assert outage.failed("again") == pytest.approx(0.1)  # a new outage starts afresh


async def test_pause_waits_on_the_injected_clock() -> None:
    clock = FakeClock()
    outage = Outage("X", logging.getLogger("t"), clock, Backoff(first=2.0, jitter=0.0))
    done = anyio.Event()

    async def pause() -> None:
        await outage.pause("down")
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(pause)
        await anyio.wait_all_tasks_blocked()
        clock.advance(1.5)
        await anyio.wait_all_tasks_blocked()
        assert not done.is_set()
        clock.advance(0.5)
        with anyio.fail_after(1):
            await done.wait()


async def test_a_redis_outage_is_one_warning_reminders_and_one_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    t = [0.0]
    outage = RedisOutage(
        "redis://h:1/0", logging.getLogger("t"), remind_every=60.0, now=lambda: t[0]
    )
    outage.recovered("liveness")  # nothing to clear
    for _ in range(300):  # three loops failing every second for 100 s
        for member in ("processing", "notifications", "liveness"):
            outage.failed(member, "connection refused")
        t[0] += 1.0 / 3
    woken = []

    async def waiter() -> None:
        woken.append(await outage.pause(30.0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(0.01)
        outage.recovered("notifications")  # the first success ends it and wakes the others
    outage.recovered("liveness")
    assert woken == [True]
    loud = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert [level for level, _ in loud] == ["WARNING", "WARNING", "INFO"]
    assert "unavailable (processing: connection refused)" in loud[0][1]
    assert "still unavailable after 60 s" in loud[1][1]
    assert loud[2][1] == "Redis at redis://h:1/0 available again after 100.0 s of outage"
    assert not outage.active and outage.outages == 1
