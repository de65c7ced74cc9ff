"""The runner with an in-memory change source, input reader and sink on a FakeClock.

The fakes are the package's (`harvest_async.testing`), wired by `tests.support.component`.
Time only moves with `clock.advance`; the real-time waits are safety timeouts for
in-memory work that takes a few event-loop turns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from harvest_async.core.ports import PublishOut, RetractOut
from harvest_async.testing import MemoryStore
from tests.support.component import (
    ABC,
    FLOOR,
    HEARTBEAT,
    NONE_PNL,
    P25_PNL,
    P50_PNL,
    T0,
    Harness,
    build,
    change,
    inp,
    running,
    settle,
    until,
)

# -- tests ------------------------------------------------------------------------------


async def test_startup_publishes_every_symbol_in_one_batch() -> None:
    h = build()
    async with running(h):
        assert len(h.sink.batches) == 1
        (batch,) = h.sink.batches
        assert sorted(o.symbol for o in batch) == list(ABC)
        assert all(isinstance(o, PublishOut) and o.trigger == "startup" for o in batch)
        assert h.store.fetches == [list(ABC)]
        assert h.runner.passes == 1
        assert not h.engine.starting
        await settle()
        assert len(h.sink.batches) == 1  # nothing else to do until time moves


async def test_startup_adopts_a_matching_hash() -> None:
    previous = build()
    async with running(previous):
        pass
    h = build()
    h.store.proposals = {"A": previous.store.proposals["A"]}
    async with running(h):
        (batch,) = h.sink.batches
        assert sorted(o.symbol for o in batch) == ["B", "C"]
        assert h.engine.published("A") is not None


async def test_adopted_hash_heartbeats_on_time() -> None:
    previous = build()
    async with running(previous):
        pass
    h = build(reconcile_every=HEARTBEAT)  # as the service configures it
    h.clock.advance(20.0)
    h.store.proposals = {"A": previous.store.proposals["A"]}  # written at T0
    async with running(h):
        assert sorted(o.symbol for o in h.sink.batches[0]) == ["B", "C"]
        h.clock.advance(HEARTBEAT - 20.0)  # T0 + 60: A's hash is a heartbeat old
        with anyio.move_on_after(0.5):
            await until(lambda: len(h.sink.publishes("A")) == 1)
        (out,) = h.sink.publishes("A")
        assert out.trigger == "heartbeat"
        assert out.plan_id == previous.store.proposals["A"]["plan_id"]


async def test_burst_is_coalesced_into_one_fetch_and_one_publish() -> None:
    h = build()
    async with running(h):
        h.clock.advance(20.0)
        fetched = len(h.store.fetches)
        h.source.changed("Z", times=100)  # not a configured symbol: ignored
        await change(h, "A", inp("A", P25_PNL), times=10_000)
        assert h.store.fetches[fetched:] == [["A"]]
        assert len(h.sink.batches) == 2
        (out,) = h.sink.batches[1]
        assert isinstance(out, PublishOut)
        assert out.symbol == "A" and out.decision.harvest_action == "PARTIAL_25"
        assert out.trigger == "change"
        await settle()
        assert len(h.store.fetches) == fetched + 1
        assert len(h.sink.batches) == 2


async def test_floor_trailing_edge_on_the_fake_clock() -> None:
    h = build()
    async with running(h):
        h.clock.advance(3.0)
        await change(h, "A", inp("A", P25_PNL))
        h.clock.advance(2.0)
        await change(h, "A", inp("A", P50_PNL))
        assert len(h.sink.batches) == 1  # both deferred
        assert h.engine.next_deadline() == T0 + FLOOR
        h.clock.advance(4.9)
        await settle()
        assert len(h.sink.batches) == 1
        h.clock.advance(0.1)
        await until(lambda: len(h.sink.batches) == 2)
        (out,) = h.sink.batches[1]
        assert isinstance(out, PublishOut)
        assert out.decision.harvest_action == "PARTIAL_50"  # the latest state
        assert out.trigger == "change"
        assert out.at == T0 + FLOOR
        await settle()
        assert len(h.sink.batches) == 2
        h.clock.advance(FLOOR)
        await settle()
        assert len(h.sink.batches) == 2  # and nothing after it
        assert [e["harvest_action"] for e in h.sink.audit_of("A")] == ["NONE", "PARTIAL_50"]


async def test_floor_revert_publishes_nothing() -> None:
    h = build()
    async with running(h):
        h.clock.advance(3.0)
        await change(h, "A", inp("A", P25_PNL))
        await change(h, "A", inp("A", NONE_PNL))
        h.clock.advance(10.0)
        await settle()
        assert len(h.sink.batches) == 1


async def test_retraction_is_written_inside_the_floor() -> None:
    h = build()
    async with running(h):
        h.clock.advance(1.0)
        await change(h, "A", inp("A", position=False))
        await until(lambda: len(h.sink.batches) == 2)
        (out,) = h.sink.batches[1]
        assert isinstance(out, RetractOut) and out.reason.startswith("no_position")
        assert "A" not in h.store.proposals


async def test_heartbeat_on_the_fake_clock() -> None:
    h = build()
    async with running(h):
        startup = {o.symbol: o for o in h.sink.batches[0] if isinstance(o, PublishOut)}
        h.clock.advance(HEARTBEAT - 1)
        await settle()
        assert len(h.sink.batches) == 1
        h.clock.advance(1.0)
        await until(lambda: len(h.sink.batches) == 2)
        beats = h.sink.batches[1]
        assert sorted(o.symbol for o in beats) == list(ABC)
        for out in beats:
            assert isinstance(out, PublishOut)
            assert out.trigger == "heartbeat"
            assert out.plan_id == startup[out.symbol].plan_id
            assert out.seq > startup[out.symbol].seq
        await settle()
        assert len(h.sink.batches) == 2
        h.clock.advance(HEARTBEAT)
        await until(lambda: len(h.sink.batches) == 3)


async def test_heartbeat_and_periodic_reconcile_at_the_same_time() -> None:
    h = build(reconcile_every=HEARTBEAT)
    async with running(h):
        h.clock.advance(HEARTBEAT)
        await until(lambda: len(h.sink.batches) == 2)
        await settle()
        assert len(h.sink.batches) == 2
        for sym in ABC:
            assert len(h.sink.publishes(sym, since=1)) == 1


async def test_gap_triggers_a_full_resync() -> None:
    h = build()
    async with running(h):
        h.clock.advance(20.0)
        h.store.inputs["B"] = inp("B", P25_PNL)  # changed while notifications were lost
        fetched = len(h.store.fetches)
        h.source.gap("reconnected")
        await until(lambda: h.runner.passes == 2)
        await settle()
        assert h.store.fetches[fetched:] == [list(ABC)]
        assert len(h.sink.batches) == 2
        (out,) = h.sink.batches[1]
        assert isinstance(out, PublishOut) and out.symbol == "B"


async def test_sink_failure_is_retried_and_published_once() -> None:
    h = build()
    async with running(h):
        h.clock.advance(20.0)
        h.sink.fail = 1
        before = h.engine.published("A")
        h.store.inputs["A"] = inp("A", P25_PNL)
        h.source.changed("A")
        await until(lambda: h.sink.attempts == 2)
        await settle()
        assert len(h.sink.batches) == 1
        assert h.engine.published("A") == before  # nothing confirmed
        await until(lambda: len(h.sink.batches) == 2)  # the runner backs off 0.5 s
        await settle()
        (out,) = h.sink.publishes("A", since=1)
        assert out.decision.harvest_action == "PARTIAL_25"
        assert h.engine.published("A") == out.decision
        h.clock.advance(1.0)  # the retry timer finds nothing left to do
        await settle()
        assert len(h.sink.publishes("A", since=1)) == 1
        assert all(len(h.sink.publishes(s, since=1)) == 0 for s in ("B", "C"))


async def test_sink_failure_during_startup_is_retried() -> None:
    h = build()
    h.sink.fail = 1
    async with running(h):
        assert h.sink.attempts == 2
        (batch,) = h.sink.batches
        assert sorted(o.symbol for o in batch) == list(ABC)
        assert all(isinstance(o, PublishOut) and o.trigger == "startup" for o in batch)


async def test_all_symbols_mode_tracks_a_new_symbol() -> None:
    h = build(symbols=None)
    async with running(h):
        assert [o.symbol for o in h.sink.batches[0]] == ["A"]
        await change(h, "NEW", inp("NEW"))
        await until(lambda: len(h.sink.batches) == 2)
        (out,) = h.sink.batches[1]
        assert isinstance(out, PublishOut) and out.symbol == "NEW"
        assert out.trigger == "change"
        assert sorted(h.engine.symbols()) == ["A", "NEW"]
        # a symbol with market state but no position is not tracked
        await change(h, "MS_ONLY", inp("MS_ONLY", position=False), times=3)
        assert sorted(h.engine.symbols()) == ["A", "NEW"]
        assert len(h.sink.batches) == 2


async def test_all_symbols_resync_discovers_symbols() -> None:
    h = build(symbols=None)
    async with running(h):
        h.store.inputs["D"] = inp("D")  # appeared without a notification
        h.source.gap("reconnected")
        await until(lambda: len(h.sink.batches) == 2)
        assert sorted(h.store.fetches[-1]) == ["A", "D"]
        assert [o.symbol for o in h.sink.batches[1]] == ["D"]


# -- refused and uncertain writes -----------------------------------------------------------


def retracted(h: Harness, symbol: str) -> bool:
    return any(
        isinstance(o, RetractOut) and o.symbol == symbol for batch in h.sink.batches for o in batch
    )


async def test_refused_writes_back_off_without_resync_and_converge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="harvest_async")
    h = build()
    async with running(h):
        h.clock.advance(20.0)
        h.sink.refuse = set(ABC)  # e.g. out of memory: every write is refused
        await change(h, "A", inp("A", position=False))  # closed: a retraction to write
        await change(h, "B", inp("B", P25_PNL))
        attempts = h.sink.attempts
        assert attempts == 3  # the startup write and one refused write per change
        assert h.runner.passes == 1  # Redis is up: no resync
        for delay in (1.0, 2.0, 4.0, 4.0):  # A and B retried together, backing off
            h.clock.advance(delay - 0.25)
            await settle()
            assert h.sink.attempts == attempts
            h.clock.advance(0.25)
            attempts += 1
            await until(lambda n=attempts: h.sink.attempts == n)
            await settle()
        await change(h, "B", inp("B", P50_PNL))  # a newer state while refused
        h.sink.refuse = set()  # cleared
        h.clock.advance(4.0)
        await until(lambda: retracted(h, "A"))
        await settle()
        (out,) = h.sink.publishes("B", since=1)  # only the latest state, once
        assert out.decision.harvest_action == "PARTIAL_50"
        assert h.runner.passes == 1
        h.clock.advance(10.0)
        await settle()
        assert len(h.sink.batches) == 2  # nothing left to retry
    about_writes = [r for r in caplog.records if "proposal write" in r.getMessage()]
    assert [r.levelno for r in about_writes] == [logging.WARNING, logging.INFO]
    assert "OOM command not allowed" in about_writes[0].getMessage()
    assert not [r for r in caplog.records if "redis unavailable" in r.getMessage()]


async def test_a_refused_symbol_does_not_hold_back_the_others_in_its_batch() -> None:
    h = build()
    async with running(h):
        h.clock.advance(20.0)
        h.sink.refuse = {"A"}  # e.g. NOPERM on one proposal key
        h.store.inputs.update({sym: inp(sym, P25_PNL) for sym in ABC})
        for sym in ABC:
            h.source.changed(sym)
        await until(lambda: len(h.sink.batches) == 2)
        await settle()
        assert sorted(o.symbol for o in h.sink.batches[1]) == ["B", "C"]  # at once
        h.sink.refuse = set()
        h.clock.advance(1.0)
        await until(lambda: len(h.sink.publishes("A", since=1)) == 1)


async def test_a_write_that_landed_unseen_is_confirmed_not_repeated() -> None:
    h = build()
    async with running(h):
        h.clock.advance(20.0)
        h.sink.uncertain = True  # applied, but the reply was lost
        await change(h, "A", inp("A", P25_PNL))
        await until(lambda: h.runner.passes == 2)  # the resync after the error
        await settle()
        h.clock.advance(1.0)  # past the retry timer too
        await settle()
        assert len(h.sink.publishes("A", since=1)) == 1  # written once
        assert h.engine.published("A") == h.sink.publishes("A", since=1)[0].decision


async def test_a_write_that_did_not_land_is_written_again() -> None:
    h = build()
    async with running(h):
        h.clock.advance(20.0)
        h.sink.uncertain = False  # the outcome was unknown, and it did not land
        await change(h, "A", inp("A", P25_PNL))
        await until(lambda: len(h.sink.publishes("A", since=1)) == 1)
        await settle()
        assert h.engine.published("A") == h.sink.publishes("A", since=1)[0].decision


async def test_nothing_is_written_before_an_uncertain_write_is_settled() -> None:
    h = build()
    async with running(h):
        h.clock.advance(20.0)
        h.sink.uncertain = True
        h.sink.unanswered = 2  # the check cannot be made for a while
        await change(h, "A", inp("A", P25_PNL))
        await until(lambda: h.runner.passes == 2, limit=5.0)  # 0.5 s pauses (real time)
        assert h.sink.unanswered == 0
        await settle()
        h.clock.advance(1.0)
        await settle()
        assert len(h.sink.publishes("A", since=1)) == 1


class ChurnStore(MemoryStore):
    """Discovery that takes its snapshot, then lets a producer act before it returns: a
    key created after SCAN passed its slot, its notification consumed during the await."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.during_discover: Callable[[], None] | None = None

    async def discover(self) -> list[str]:
        found = await super().discover()
        act, self.during_discover = self.during_discover, None
        if act is not None:
            act()
        await anyio.lowlevel.checkpoint()
        return found


async def test_symbol_created_while_discovery_runs_is_published_by_that_resync() -> None:
    store = ChurnStore([inp("A")])
    h = build(symbols=None, reconcile_every=HEARTBEAT, store=store)

    def new_position() -> None:
        store.set_inputs(inp("NEW", P25_PNL))
        h.source.changed("NEW")

    async with running(h):
        store.during_discover = new_position
        h.clock.advance(HEARTBEAT)  # the periodic reconcile, which scans again
        await until(lambda: h.runner.passes == 2)
        # published by this very reconcile, not a heartbeat later
        (out,) = h.sink.publishes("NEW")
        assert out.trigger == "change"
        assert out.decision.harvest_action == "PARTIAL_25"
