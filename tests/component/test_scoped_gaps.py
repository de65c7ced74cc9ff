"""Gaps scoped to cluster slots (issue 14): a topology change resyncs only the symbols with
an input or proposal key in a slot that changed owner, a node's own gaps (its listener's,
a read from it failing) only those with a key in its slots; the runner on the in-memory
fakes (`tests.support.component`), SYMBOLS='*'."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from harvest_async.backoff import RedisOutage
from harvest_async.core.input_hashes import SymbolInputs
from harvest_async.core.keys import Keys
from harvest_async.core.ports import Output
from harvest_async.core.slots import key_slot
from harvest_async.errors import NodeUnavailable, RedisUnavailable, WriteRefused
from harvest_async.testing import MemorySink, MemoryStore
from tests.support.component import P25_PNL, Harness, build, inp, running, settle, until

KEYS = Keys()
SYMBOLS = [f"S{i:02d}" for i in range(60)]
TOPOLOGY = "cluster topology changed"


def slots_of(symbol: str) -> set[int]:
    keys = (KEYS.marketstate, KEYS.risk, KEYS.position, KEYS.proposal)
    return {key_slot(key(symbol)) for key in keys}


def in_slots(moved: frozenset[int], symbols: Sequence[str] = SYMBOLS) -> list[str]:
    return sorted(s for s in symbols if slots_of(s) & moved)


def harness(store: MemoryStore | None = None, *, keys: Keys | None = KEYS) -> Harness:
    store = store or MemoryStore(inp(s) for s in SYMBOLS)
    return build(None, store=store, keys=keys)


# one slot of S07 (its position's) and one of S21 (its proposal's)
MOVED = frozenset({key_slot(KEYS.position("S07")), key_slot(KEYS.proposal("S21"))})


async def test_a_topology_gap_resyncs_only_the_symbols_in_the_moved_slots(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    expected = in_slots(MOVED)
    assert {"S07", "S21"} <= set(expected) and len(expected) < 6
    h = harness()
    async with running(h):
        h.clock.advance(20.0)
        # changed while their notifications were lost: S07's key moved, S30's did not
        # (its notification would have come from a listener that stayed)
        h.store.inputs["S07"] = inp("S07", P25_PNL)
        h.store.inputs["S30"] = inp("S30", P25_PNL)
        fetched, reads = len(h.store.fetches), len(h.store.proposal_reads)
        h.source.gap(TOPOLOGY, MOVED, "2 slots moved")
        await until(lambda: len(h.store.fetches) > fetched)
        await settle()
        assert h.store.fetches[fetched:] == [expected]
        assert h.store.proposal_reads[reads:] == [expected]  # only theirs checked
        assert [o.symbol for o in h.sink.batches[-1]] == ["S07"]
        assert not h.sink.publishes("S30", since=1)
        assert h.runner.passes == 1  # not a full pass: the reconcile keeps its schedule
    line = f"{TOPOLOGY}: 2 slots moved; resyncing {len(expected)} of {len(SYMBOLS)} symbols"
    assert [r.getMessage() for r in caplog.records].count(line) == 1


async def test_a_new_symbol_in_a_moved_slot_is_discovered() -> None:
    h = harness()
    async with running(h):
        # created while its node changed: never notified
        for new in ("N1", "N2"):
            h.store.set_inputs(inp(new, P25_PNL))
        moved = frozenset({key_slot(KEYS.position("N1"))})
        assert key_slot(KEYS.position("N2")) not in moved
        fetched = len(h.store.fetches)
        h.source.gap(TOPOLOGY, moved)
        await until(lambda: len(h.store.fetches) > fetched)
        await settle()
        (read,) = h.store.fetches[fetched:]
        assert "N1" in read and "N2" not in read
        assert read == in_slots(moved, [*SYMBOLS, "N1", "N2"])
        assert len(h.sink.publishes("N1")) == 1
        assert not h.sink.publishes("N2")


async def test_gaps_met_before_the_resync_widen_it() -> None:
    h = harness()
    async with running(h):
        other = frozenset({key_slot(KEYS.risk("S44"))})
        fetched = len(h.store.fetches)
        h.source.gap(TOPOLOGY, MOVED)
        h.source.gap(TOPOLOGY, other)  # both before the round: one resync of both
        h.source.changed("S50")  # dirty anyway: read in the same pass, whole
        await until(lambda: len(h.store.fetches) > fetched)
        await settle()
        assert h.store.fetches[fetched:] == [sorted({*in_slots(MOVED | other), "S50"})]
        assert h.store.kind_fetches[-1] is None
        fetched = len(h.store.fetches)
        h.source.gap(TOPOLOGY, MOVED)
        h.source.gap("resubscribed")  # a gap for every symbol: the pass is full
        await until(lambda: h.runner.passes == 2)
        assert h.store.fetches[fetched:] == [SYMBOLS]


async def test_without_keys_a_scoped_gap_resyncs_everything() -> None:
    h = harness(keys=None)
    async with running(h):
        fetched = len(h.store.fetches)
        h.source.gap(TOPOLOGY, MOVED)
        await until(lambda: h.runner.passes == 2)
        assert h.store.fetches[fetched:] == [SYMBOLS]


class FailingStore(MemoryStore):
    """Fetches raise RedisUnavailable while `failing` is above zero (one each), and
    discoveries while `lost` is."""

    failing = 0
    lost = 0

    async def discover(self) -> list[str]:
        if self.lost:
            self.lost -= 1
            raise RedisUnavailable("connection lost")
        return await super().discover()

    async def fetch(
        self, symbols: Sequence[str], kinds: Sequence[int] | None = None
    ) -> list[SymbolInputs]:
        if self.failing:
            self.failing -= 1
            self.fetches.append(list(symbols))
            raise RedisUnavailable("connection lost")
        return await super().fetch(symbols, kinds)


async def test_a_scoped_resync_that_fails_is_done_again_in_full() -> None:
    store = FailingStore(inp(s) for s in SYMBOLS)
    h = harness(store)
    async with running(h):
        h.clock.advance(20.0)  # past the floor
        h.store.inputs["S07"] = inp("S07", P25_PNL)
        fetched = len(h.store.fetches)
        store.failing = 1
        h.source.gap(TOPOLOGY, MOVED)
        # the failed read is a gap of its own ("redis error"): what it missed is unknown
        await until(lambda: h.runner.passes == 2, limit=5.0)
        assert h.store.fetches[fetched:] == [in_slots(MOVED), SYMBOLS]
        assert len(h.sink.publishes("S07", since=1)) == 1


async def test_the_topology_line_is_written_once_when_its_resync_is_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    store = FailingStore(inp(s) for s in SYMBOLS)
    h = harness(store)
    async with running(h):
        store.lost = 1  # the discovery fails: nothing was logged yet
        h.source.gap(TOPOLOGY, MOVED, "2 slots moved")
        await until(lambda: h.runner.passes == 2, limit=5.0)
        store.failing = 1  # the next one fails after its line
        h.source.gap(TOPOLOGY, MOVED, "2 slots moved again")
        await until(lambda: h.runner.passes == 3, limit=5.0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(TOPOLOGY)]
    # widened to every symbol by the failure's own gap ("redis error"), said once each
    assert lines == [
        f"{TOPOLOGY}: 2 slots moved; resyncing {len(SYMBOLS)} of {len(SYMBOLS)} symbols",
        f"{TOPOLOGY}: 2 slots moved again; resyncing {len(in_slots(MOVED))} of "
        f"{len(SYMBOLS)} symbols",
    ]


# -- a cluster node's own gaps (issue 14): its listener's, and a lost node's reads --------
async def test_a_listeners_gaps_resync_only_the_slots_its_node_serves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A node's listener scopes its gaps to the slots the node serves (`ClusterSource`):
    resubscribed (said with its count), a new primary's (said by the topology line
    already: quiet) and a poll-mode tick (quiet, as on one server)."""
    caplog.set_level(logging.INFO)
    h = harness()
    async with running(h):
        for reason in ("resubscribed", "listening to a new primary", "poll"):
            fetched = len(h.store.fetches)
            h.source.gap(reason, MOVED)
            await until(lambda n=fetched: len(h.store.fetches) > n)  # type: ignore[misc]
            await settle()
            assert h.store.fetches[fetched:] == [in_slots(MOVED)], reason
        assert h.runner.passes == 1
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resync (")]
    assert lines == [
        "resync (startup)",
        f"resync (resubscribed): {len(in_slots(MOVED))} of {len(SYMBOLS)} symbols",
    ]


class LosingStore(MemoryStore):
    """Fetches of a symbol in `lost` raise NodeUnavailable (its node's slots) while
    `failing` is above zero (one each)."""

    failing = 0
    lost = MOVED

    async def fetch(
        self, symbols: Sequence[str], kinds: Sequence[int] | None = None
    ) -> list[SymbolInputs]:
        if self.failing and any(slots_of(s) & self.lost for s in symbols):
            self.failing -= 1
            self.fetches.append(list(symbols))
            raise NodeUnavailable("reading inputs: node down (test)", ("10.0.0.9", 7001), self.lost)
        return await super().fetch(symbols, kinds)


async def test_a_lost_nodes_read_failure_resyncs_only_its_slots(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Reading from a lost cluster node fails: the resync after it is of the symbols with
    a key in the slots that node served (the other nodes' listeners lost nothing), and
    it writes no line of its own (the node's loss is the outage's line)."""
    caplog.set_level(logging.INFO)
    store = LosingStore(inp(s) for s in SYMBOLS)
    h = harness(store)
    async with running(h):
        h.clock.advance(20.0)
        store.failing = 1
        h.store.inputs["S07"] = inp("S07", P25_PNL)
        fetched = len(h.store.fetches)
        h.source.changed("S07")
        await until(lambda: len(h.store.fetches) >= fetched + 2, limit=5.0)
        await settle()
        assert h.store.fetches[fetched:] == [["S07"], in_slots(MOVED)]
        assert len(h.sink.publishes("S07", since=1)) == 1
        assert h.runner.passes == 1
    assert not [r for r in caplog.records if r.getMessage().startswith("resync (node lost")]


class StreamNodeStore(MemoryStore):
    """The next `failing` fetches fail as the audit stream's node's writes do when it is
    lost: RedisUnavailable naming the node, no slots (every symbol publishes through it)."""

    failing = 0

    async def fetch(
        self, symbols: Sequence[str], kinds: Sequence[int] | None = None
    ) -> list[SymbolInputs]:
        if self.failing:
            self.failing -= 1
            self.fetches.append(list(symbols))
            exc = RedisUnavailable("audit entries: node down (test)")
            exc.node = ("10.0.0.9", 7001)
            raise exc
        return await super().fetch(symbols, kinds)


async def test_the_audit_stream_nodes_loss_resyncs_every_symbol_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    store = StreamNodeStore(inp(s) for s in SYMBOLS)
    h = harness(store)
    async with running(h):
        store.failing = 1
        h.source.changed("S07")
        await until(lambda: h.runner.passes == 2, limit=5.0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resync (")]
    assert lines == ["resync (startup)"]


async def test_a_topology_gap_gives_a_pending_resync_its_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A node lost, then the topology change that replaced it before the resync ran:
    one resync of both scopes, said once in the topology line's words with its count."""
    caplog.set_level(logging.INFO)
    h = harness()
    other = frozenset({key_slot(KEYS.risk("S44"))})
    async with running(h):
        fetched = len(h.store.fetches)
        h.source.gap("node lost", MOVED)
        h.source.gap(TOPOLOGY, other, "1 slots moved; 10.0.0.9:7001 (lost) -> 10.0.0.8:7001")
        await until(lambda: len(h.store.fetches) > fetched)
        await settle()
        assert h.store.fetches[fetched:] == [in_slots(MOVED | other)]
    lines = [r.getMessage() for r in caplog.records if r.__dict__.get("event") == "resync"]
    assert lines[1:] == [
        f"{TOPOLOGY}: 1 slots moved; 10.0.0.9:7001 (lost) -> 10.0.0.8:7001; resyncing "
        f"{len(in_slots(MOVED | other))} of {len(SYMBOLS)} symbols"
    ]


class UnreachableSink(MemorySink):
    """The next `lost` writes fail as a cluster sink's do when the node of some of their
    proposal hashes cannot be reached: the audit entries appended, those hashes not."""

    lost = 0

    async def write(self, outputs: Sequence[Output]) -> None:
        if not self.lost:
            return await super().write(outputs)
        self.lost -= 1
        raise WriteRefused(
            "reading inputs: node down (test)",
            touched=outputs,
            unreachable=("10.0.0.9", 7001),
        )


async def test_a_write_to_a_lost_node_is_the_outages_not_a_refusal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    store = MemoryStore(inp(s) for s in SYMBOLS)
    h = harness(store)
    sink = UnreachableSink(store)
    h.runner.sink = sink
    failures: list[tuple[str, tuple[str, int] | None]] = []

    class Recording(RedisOutage):
        def failed(self, member: str, detail: str, *, node: tuple[str, int] | None = None) -> None:
            failures.append((member, node))

    h.runner.outage = Recording("test", logging.getLogger("test"))
    async with running(h):
        h.clock.advance(20.0)
        sink.lost = 1
        h.store.inputs["S07"] = inp("S07", P25_PNL)
        h.source.changed("S07")
        await until(lambda: bool(failures))
        h.clock.advance(2.0)  # the node's retry (at most 2 s)
        await until(lambda: bool(sink.publishes("S07")))
    assert failures == [("writes", ("10.0.0.9", 7001))]
    assert not [r for r in caplog.records if "refuses proposal writes" in r.getMessage()]
