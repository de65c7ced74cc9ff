"""A publisher group's share in the runner, on the fakes: only owned symbols are tracked
and written; a takeover adopts the proposals in place (no publish storm, seq goes on);
losing a partition drops its symbols; a fenced write gives its symbols up, unretried."""

from __future__ import annotations

from collections.abc import Sequence

from harvest_async.core.ports import Output
from harvest_async.errors import Fenced
from harvest_async.testing import MemoryStore
from tests.support.component import FLOOR, P25_PNL, build, change, idle, inp, running, settle

SYMS = ("A", "B", "C", "D")


async def test_only_owned_symbols_are_tracked_and_a_takeover_adopts() -> None:
    store = MemoryStore(inp(s, P25_PNL) for s in SYMS)
    h = build(None, store=store)
    owned = {"A", "B"}
    h.engine.scope(lambda s: s in owned)
    async with running(h):
        await idle(h)
        assert {o.symbol for o in h.sink.outputs} == {"A", "B"}
        assert sorted(h.engine.symbols()) == ["A", "B"]
        fetches = len(store.fetches)
        store.set_inputs(inp("C", P25_PNL + 4))
        h.source.changed("C")  # not ours: ignored, not even read
        await settle()
        assert "C" not in h.engine.symbols() and len(store.fetches) == fetches
        store.set_inputs(inp("C", P25_PNL))
        # another member published C and D; they become ours: adopted, not rewritten
        other = build(("C", "D"), store=MemoryStore(inp(s, P25_PNL) for s in ("C", "D")))
        async with running(other):
            await idle(other)
        for sym in ("C", "D"):
            store.proposals[sym] = other.store.proposals[sym]
        writes = len(h.sink.outputs)
        owned |= {"C", "D"}
        h.runner.take_over()
        await idle(h)
        assert sorted(h.engine.symbols()) == ["A", "B", "C", "D"]
        assert len(h.sink.outputs) == writes  # adopted: nothing written
        assert h.engine.adopted == 2
        # a change on C publishes above the other member's seq
        before = {o.symbol: o.seq for o in other.sink.outputs}
        await change(h, "C", inp("C", P25_PNL + 4))
        h.clock.advance(FLOOR)  # the floor runs from the adopted publish
        await idle(h)
        assert h.sink.outputs[-1].symbol == "C" and h.sink.outputs[-1].seq > before["C"]
        # losing A and B drops their state
        owned -= {"A", "B"}
        assert sorted(h.runner.rescope()) == ["A", "B"]
        store.set_inputs(inp("A", P25_PNL + 4))
        h.source.changed("A")
        await settle()
        assert h.sink.outputs[-1].symbol == "C"


async def test_a_fenced_write_is_given_up_not_retried() -> None:
    store = MemoryStore(inp(s, P25_PNL) for s in SYMS)
    h = build(None, store=store)
    owned = set(SYMS)
    h.engine.scope(lambda s: s in owned)
    fenced: list[list[Output]] = []

    def on_fenced(outputs: list[Output], reply: str) -> None:
        assert reply.startswith("FENCED")
        fenced.append(outputs)
        owned.difference_update(o.symbol for o in outputs)
        h.runner.rescope()

    h.runner.on_fenced = on_fenced
    write = h.sink.write
    fence = {"B"}

    async def fenced_write(outputs: Sequence[Output]) -> None:
        mine = [o for o in outputs if o.symbol not in fence]
        if len(mine) < len(outputs):
            await write(mine)
            raise Fenced("FENCED lease held by another (test)", landed=mine)
        await write(outputs)

    h.sink.write = fenced_write  # type: ignore[method-assign]
    async with running(h):
        await idle(h)
        assert [[o.symbol for o in batch] for batch in fenced] == [["B"]]
        assert "B" not in h.engine.symbols()
        assert {o.symbol for o in h.sink.outputs} == {"A", "C", "D"}
        attempts = h.sink.attempts
        store.set_inputs(inp("B", P25_PNL + 4))
        h.source.changed("B")
        await settle()
        assert h.sink.attempts == attempts  # not ours any more: nothing to write
        h.clock.advance(30)
        await idle(h)
        assert len(fenced) == 1
