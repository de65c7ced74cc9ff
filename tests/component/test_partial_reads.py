"""A notification names the input hash that changed: a symbol the engine holds is read
again only there, the other two kept as the engine holds them; anything else (a symbol
not held yet, a resync, a retry) reads all three."""

from __future__ import annotations

from typing import Any

from harvest_async.core.engine import Engine
from harvest_async.core.input_hashes import SymbolInputs
from harvest_async.core.ports import PublishOut
from harvest_async.core.rounds import ALL_KINDS, KIND_BITS, Discover, Fetch, Rounds, Step, Write
from harvest_async.testing import MemoryStore
from tests.support.component import (
    ABC,
    MS,
    P25_PNL,
    P50_PNL,
    T0,
    build,
    change,
    engine_for,
    inp,
    running,
    settle,
    until,
)

POSITION, MARKET = KIND_BITS["position"], KIND_BITS["marketstate"]


async def test_a_position_change_reads_only_the_position() -> None:
    h = build()
    async with running(h):
        h.clock.advance(20.0)
        before = len(h.store.fetches)
        await change(h, "A", inp("A", P25_PNL))
        assert h.store.fetches[before:] == [["A"]]
        assert h.store.kind_fetches[before:] == [[POSITION]]
        (out,) = h.sink.batches[-1]
        # the market state and risk the engine held were used with the new position
        assert isinstance(out, PublishOut) and out.decision.harvest_action == "PARTIAL_25"
        assert out.fields["position_unrealized_pnl"] == repr(P25_PNL)


async def test_changes_of_two_hashes_coalesce_into_one_read_of_both() -> None:
    h = build()
    async with running(h):
        h.clock.advance(20.0)
        before = len(h.store.fetches)
        h.store.set_inputs(inp("B", P50_PNL, ms={**MS, "sigma": "0.02"}))
        h.source.changed("B", "marketstate")
        h.source.changed("B", "position", times=3)
        await until(lambda: len(h.store.fetches) > before)
        await settle()
        assert h.store.kind_fetches[before:] == [[MARKET | POSITION]]
        (out,) = h.sink.batches[-1]
        assert isinstance(out, PublishOut) and out.fields["sigma"] == "0.02"


async def test_a_symbol_not_held_is_read_whole() -> None:
    h = build(None)  # SYMBOLS='*'
    async with running(h):
        before = len(h.store.fetches)
        await change(h, "NEW", inp("NEW", P25_PNL))
        assert h.store.kind_fetches[before:] == [[ALL_KINDS]]
        (out,) = h.sink.batches[-1]
        assert isinstance(out, PublishOut) and out.symbol == "NEW"


async def test_a_change_not_notified_is_seen_at_the_resync() -> None:
    """Only a notification says which hash to read; a change whose notification was lost
    is what the gap's full resync is for."""
    h = build()
    async with running(h):
        h.clock.advance(20.0)
        batches = len(h.sink.batches)
        before = len(h.store.fetches)
        # the position changes, but the notification that comes names the risk hash
        await change(h, "C", inp("C", P25_PNL), kind="risk")
        assert h.store.kind_fetches[before:] == [[KIND_BITS["risk"]]]
        assert len(h.sink.batches) == batches  # the risk hash read is unchanged
        h.source.gap("reconnected")
        await until(lambda: h.runner.passes == 2)
        await settle()
        assert h.store.kind_fetches[before + 1 :] == [None]  # all of every symbol
        assert h.store.fetches[before + 1 :] == [list(ABC)]
        (out,) = h.sink.batches[-1]
        assert isinstance(out, PublishOut) and out.symbol == "C"
        assert out.fields["position_unrealized_pnl"] == repr(P25_PNL)


# -- the round cap: changes that may publish first ------------------------------------------


def _drive(step: Step, store: dict[str, SymbolInputs], engine: Engine, log: list[Any]) -> None:
    """Answer a round's requests from `store` (as the replayer does), logging them."""
    answer: Any = None
    try:
        while True:
            request = step.send(answer)
            log.append(request)
            if isinstance(request, Fetch):
                answer = [store.get(s) or SymbolInputs(s) for s in request.symbols]
            elif isinstance(request, Write):
                engine.confirm(request.outputs)
                answer = None
            elif isinstance(request, Discover):
                answer = sorted(store)
            else:
                answer = {}
    except StopIteration:
        return


def test_symbols_the_floor_does_not_hold_go_first_in_a_round_of_their_own() -> None:
    now = [T0]
    engine = engine_for(symbols=None)
    store = {s: inp(s) for s in "ABC"}
    rounds = Rounds(engine, symbols=None, reconcile_every=3600.0, now=lambda: now[0], round_cap=2)
    requests: list[Any] = []
    _drive(rounds.startup(), store, engine, requests)  # A, B, C published: floor until +10
    now[0] += 1.0
    for s in "ABC":
        store[s] = inp(s, P25_PNL)
        rounds.changed(s, now[0], "position")
    store["Q"] = inp("Q", P25_PNL)  # a new symbol: nothing holds it back
    rounds.changed("Q", now[0], "position")
    requests.clear()
    _drive(rounds.round(), store, engine, requests)
    fetches = [r for r in requests if isinstance(r, Fetch)]
    assert [f.symbols for f in fetches] == [["Q"]]  # alone: no backlog makes it wait
    (write,) = [r for r in requests if isinstance(r, Write)]
    assert [o.symbol for o in write.outputs] == ["Q"]
    assert rounds.pending and not rounds.urgent
    for expected in (["A", "B"], ["C"]):  # then the longest waiting, `cap` at a time
        requests.clear()
        _drive(rounds.round(), store, engine, requests)
        assert [r.symbols for r in requests if isinstance(r, Fetch)] == [expected]
        assert not any(isinstance(r, Write) for r in requests)  # deferred by the floor
    assert not rounds.pending


# -- gathering floor-held changes ---------------------------------------------------------------


async def test_floor_held_changes_are_gathered_and_a_free_one_ends_the_wait() -> None:
    h = build(None, store=MemoryStore(inp(s) for s in "AB"))  # SYMBOLS='*'
    h.runner.gather = 0.005
    async with running(h):
        h.clock.advance(1.0)  # A and B published at startup: the floor holds them
        before = len(h.store.fetches)
        for s in "AB":
            h.store.set_inputs(inp(s, P25_PNL))
            h.source.changed(s, "position")
            await settle()
        assert len(h.store.fetches) == before  # gathering: nothing of theirs can publish
        h.clock.advance(0.01)
        await until(lambda: len(h.store.fetches) > before)
        await settle()
        assert h.store.fetches[before:] == [["A", "B"]]  # one round for both
        before = len(h.store.fetches)
        h.store.set_inputs(inp("A", P50_PNL))
        h.source.changed("A", "position")
        await settle()
        assert len(h.store.fetches) == before
        await change(h, "Q", inp("Q", P25_PNL))  # a new symbol: may publish, no waiting
        assert h.store.fetches[before:] == [["Q"]]  # in a round of its own
        (out,) = h.sink.batches[-1]
        assert isinstance(out, PublishOut) and out.symbol == "Q"
        h.clock.advance(0.01)  # then A, gathered
        await until(lambda: len(h.store.fetches) > before + 1)
        assert h.store.fetches[before + 1 :] == [["A"]]
