"""The runner with an in-memory change source, input reader and sink on a FakeClock.

Time only moves with `clock.advance`; the real-time waits below are safety timeouts for
in-memory work that takes a few event-loop turns.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import TaskStatus

from harvest_async.backoff import Backoff
from harvest_async.clock import FakeClock
from harvest_async.core.engine import Engine, EngineConfig
from harvest_async.core.gate import GateConfig
from harvest_async.core.input_hashes import Hash, SymbolInputs
from harvest_async.core.ports import Changed, Event, Gap, Output, PublishOut, RetractOut
from harvest_async.errors import RedisUnavailable, WriteRefused, WriteUncertain
from harvest_async.service.runner import Runner

T0 = 1_700_000_000.0
FLOOR = 10.0
HEARTBEAT = 60.0
ABC = ("A", "B", "C")

MS = {"sigma": "0.01", "ts": "0.35", "p_trend": "0.5", "p_mr": "0.2", "p_chop": "0.3"}
RISK = {"stop_dist_pct": "0.02"}
NONE_PNL, P25_PNL, P50_PNL = 1.0, 5.0, 9.0  # R 0.45 / 2.45 / 4.45


def inp(sym: str, pnl: float = NONE_PNL, *, position: bool = True) -> SymbolInputs:
    pos = {
        "side": "LONG",
        "entry_price": "100",
        "unrealized_pnl": repr(pnl),
        "current_price": "101",
        "quantity": "1",
    }
    return SymbolInputs(sym, marketstate=MS, risk=RISK, position=pos if position else None)


class MemReader:
    def __init__(self, inputs: dict[str, SymbolInputs]) -> None:
        self.inputs = inputs
        self.published: dict[str, Hash] = {}
        self.fetches: list[list[str]] = []

    async def fetch(self, symbols: Sequence[str]) -> list[SymbolInputs]:
        self.fetches.append(list(symbols))
        await anyio.lowlevel.checkpoint()
        return [self.inputs.get(sym, SymbolInputs(sym)) for sym in symbols]

    async def discover(self) -> list[str]:
        return [sym for sym, i in self.inputs.items() if i.position is not None]

    async def read_published(self, symbols: Sequence[str] | None) -> dict[str, Hash]:
        wanted = self.published if symbols is None else symbols
        return {sym: dict(self.published[sym]) for sym in wanted if sym in self.published}


class MemSink:
    """Records written batches; `fail` makes the next writes raise having written nothing;
    `refuse` names symbols whose writes Redis refuses (the whole batch aborts, the other
    outputs are collateral); `uncertain` makes the next write's outcome unknown, after
    applying it (True) or not (False)."""

    def __init__(self, reader: MemReader) -> None:
        self.reader = reader
        self.batches: list[list[Output]] = []
        self.attempts = 0
        self.fail = 0
        self.refuse: set[str] = set()
        self.uncertain: bool | None = None
        self.unanswered = 0  # outcome checks that fail before one succeeds
        self.applied: set[tuple[str, int]] = set()

    async def write(self, outputs: Sequence[Output]) -> None:
        self.attempts += 1
        await anyio.lowlevel.checkpoint()
        if self.fail:
            self.fail -= 1
            raise RedisUnavailable("sink down (test)")
        if any(o.symbol in self.refuse for o in outputs):
            collateral = [o for o in outputs if o.symbol not in self.refuse]
            raise WriteRefused("OOM command not allowed (test)", collateral=collateral)
        uncertain, self.uncertain = self.uncertain, None
        if uncertain is False:
            raise WriteUncertain("no reply (test)")
        self.batches.append(list(outputs))
        for out in outputs:
            self.applied.add((out.symbol, out.seq))
            if isinstance(out, PublishOut):
                self.reader.published[out.symbol] = dict(out.fields)
            else:
                self.reader.published.pop(out.symbol, None)
        if uncertain:
            raise WriteUncertain("no reply (test)")

    async def landed(self, outputs: Sequence[Output]) -> bool:
        await anyio.lowlevel.checkpoint()
        if self.unanswered:
            self.unanswered -= 1
            raise RedisUnavailable("sink down (test)")
        return (outputs[-1].symbol, outputs[-1].seq) in self.applied

    def publishes(self, symbol: str, since: int = 0) -> list[PublishOut]:
        return [
            o
            for batch in self.batches[since:]
            for o in batch
            if isinstance(o, PublishOut) and o.symbol == symbol
        ]


class MemSource:
    def __init__(self) -> None:
        self.emit: Callable[[Event], None] | None = None

    async def run(self, emit: Callable[[Event], None], *, task_status: TaskStatus[None]) -> None:
        self.emit = emit
        task_status.started()
        await anyio.sleep_forever()

    def changed(self, symbol: str, kind: str = "position", times: int = 1) -> None:
        assert self.emit is not None
        for _ in range(times):
            self.emit(Changed(symbol, kind))


@dataclass
class Harness:
    clock: FakeClock
    reader: MemReader
    sink: MemSink
    engine: Engine
    runner: Runner
    source: MemSource


def build(symbols: tuple[str, ...] | None = ABC, *, reconcile_every: float = 3600.0) -> Harness:
    clock = FakeClock(T0)
    reader = MemReader({sym: inp(sym) for sym in symbols or ("A",)})
    sink = MemSink(reader)
    engine = Engine(
        EngineConfig(symbols=symbols, gate=GateConfig(floor_sec=FLOOR, heartbeat_sec=HEARTBEAT))
    )
    runner = Runner(
        engine,
        reader,
        sink,
        clock,
        symbols=symbols,
        reconcile_every=reconcile_every,
        refusal_backoff=Backoff(first=1.0, cap=4.0, jitter=0.0),  # 1, 2, 4, 4 ... s
    )
    return Harness(clock, reader, sink, engine, runner, MemSource())


@asynccontextmanager
async def running(h: Harness) -> AsyncIterator[Harness]:
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(2):
            await tg.start(h.runner.run, h.source)
        try:
            yield h
        finally:
            tg.cancel_scope.cancel()


async def until(condition: Callable[[], bool], *, limit: float = 2.0) -> None:
    """Wait (real time, at most `limit` s) for in-memory work to reach `condition`."""
    with anyio.fail_after(limit):
        while not condition():
            await anyio.lowlevel.checkpoint()


async def settle(turns: int = 100) -> None:
    """Let the runner finish whatever in-memory work it has (no time passes)."""
    for _ in range(turns):
        await anyio.lowlevel.checkpoint()


async def change(h: Harness, symbol: str, inputs: SymbolInputs, times: int = 1) -> None:
    """Write new inputs, notify, and wait until the runner has fetched and handled them."""
    before = len(h.reader.fetches)
    h.reader.inputs[symbol] = inputs
    h.source.changed(symbol, times=times)
    await until(lambda: len(h.reader.fetches) > before)
    await settle()


# -- tests ------------------------------------------------------------------------------


async def test_startup_publishes_every_symbol_in_one_batch() -> None:
    h = build()
    async with running(h):
        assert len(h.sink.batches) == 1
        (batch,) = h.sink.batches
        assert sorted(o.symbol for o in batch) == list(ABC)
        assert all(isinstance(o, PublishOut) and o.trigger == "startup" for o in batch)
        assert h.reader.fetches == [list(ABC)]
        assert h.runner.passes == 1
        assert not h.engine.starting
        await settle()
        assert len(h.sink.batches) == 1  # nothing else to do until time moves


async def test_startup_adopts_a_matching_hash() -> None:
    previous = build()
    async with running(previous):
        pass
    h = build()
    h.reader.published = {"A": previous.reader.published["A"]}
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
    h.reader.published = {"A": previous.reader.published["A"]}  # written at T0
    async with running(h):
        assert sorted(o.symbol for o in h.sink.batches[0]) == ["B", "C"]
        h.clock.advance(HEARTBEAT - 20.0)  # T0 + 60: A's hash is a heartbeat old
        with anyio.move_on_after(0.5):
            await until(lambda: len(h.sink.publishes("A")) == 1)
        (out,) = h.sink.publishes("A")
        assert out.trigger == "heartbeat"
        assert out.plan_id == previous.reader.published["A"]["plan_id"]


async def test_burst_is_coalesced_into_one_fetch_and_one_publish() -> None:
    h = build()
    async with running(h):
        h.clock.advance(20.0)
        fetched = len(h.reader.fetches)
        h.source.changed("Z", times=100)  # not a configured symbol: ignored
        await change(h, "A", inp("A", P25_PNL), times=10_000)
        assert h.reader.fetches[fetched:] == [["A"]]
        assert len(h.sink.batches) == 2
        (out,) = h.sink.batches[1]
        assert isinstance(out, PublishOut)
        assert out.symbol == "A" and out.decision.harvest_action == "PARTIAL_25"
        assert out.trigger == "change"
        await settle()
        assert len(h.reader.fetches) == fetched + 1
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
        assert out.at == T0 + FLOOR
        await settle()
        assert len(h.sink.batches) == 2


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
        assert "A" not in h.reader.published


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
        h.reader.inputs["B"] = inp("B", P25_PNL)  # changed while notifications were lost
        fetched = len(h.reader.fetches)
        assert h.source.emit is not None
        h.source.emit(Gap("reconnected"))
        await until(lambda: h.runner.passes == 2)
        await settle()
        assert h.reader.fetches[fetched:] == [list(ABC)]
        assert len(h.sink.batches) == 2
        (out,) = h.sink.batches[1]
        assert isinstance(out, PublishOut) and out.symbol == "B"


async def test_sink_failure_is_retried_and_published_once() -> None:
    h = build()
    async with running(h):
        h.clock.advance(20.0)
        h.sink.fail = 1
        before = h.engine.published("A")
        h.reader.inputs["A"] = inp("A", P25_PNL)
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
        h.reader.inputs["D"] = inp("D")  # appeared without a notification
        assert h.source.emit is not None
        h.source.emit(Gap("reconnected"))
        await until(lambda: len(h.sink.batches) == 2)
        assert sorted(h.reader.fetches[-1]) == ["A", "D"]
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
        h.reader.inputs.update({sym: inp(sym, P25_PNL) for sym in ABC})
        assert h.source.emit is not None
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


class ChurnReader(MemReader):
    """Discovery that takes its snapshot, then lets a producer act before it returns: a
    key created after SCAN passed its slot, its notification consumed during the await."""

    def __init__(self, inputs: dict[str, SymbolInputs]) -> None:
        super().__init__(inputs)
        self.during_discover: Callable[[], None] | None = None

    async def discover(self) -> list[str]:
        found = await super().discover()
        act, self.during_discover = self.during_discover, None
        if act is not None:
            act()
        await anyio.lowlevel.checkpoint()
        return found


async def test_symbol_created_while_discovery_runs_is_published_by_that_resync() -> None:
    h = build(symbols=None, reconcile_every=HEARTBEAT)
    reader = ChurnReader(h.reader.inputs)
    h.reader = h.runner.reader = h.sink.reader = reader

    def new_position() -> None:
        reader.inputs["NEW"] = inp("NEW", P25_PNL)
        h.source.changed("NEW")

    async with running(h):
        reader.during_discover = new_position
        h.clock.advance(HEARTBEAT)  # the periodic reconcile, which scans again
        await until(lambda: h.runner.passes == 2)
        # published by this very reconcile, not a heartbeat later
        (out,) = h.sink.publishes("NEW")
        assert out.trigger == "change"
        assert out.decision.harvest_action == "PARTIAL_25"
