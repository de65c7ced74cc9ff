"""A notification names the input hash that changed: a symbol the engine holds is read
again only there, the other two kept as the engine holds them; anything else (a symbol
not held yet, a resync, a retry) reads all three."""

from __future__ import annotations

from harvest_async.core.ports import PublishOut
from harvest_async.core.rounds import ALL_KINDS, KIND_BITS
from tests.support.component import (
    ABC,
    MS,
    P25_PNL,
    P50_PNL,
    build,
    change,
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
