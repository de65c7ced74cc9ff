"""What the runner owes Redis, pinned on the in-memory fakes (fast, on virtual time).

The slow tier checks these against real servers; here each one is pinned in isolation:
a resync after a gap rewrites a proposal that is not the one last written (gone, or
replaced by another writer), a proposal and its audit entry count as written only
together, a notification on any input prefix (risk proposals too) recomputes its
symbol, and a heartbeat keeps the published plan_id. Plus a timing rule the slow tier
checks with the wall clock: staleness.
"""

from __future__ import annotations

import pytest

from harvest_async.core.ports import PublishOut, RetractOut
from harvest_async.core.proposal import plan_id_for
from harvest_async.testing import MemoryStore
from tests.support.component import (
    ABC,
    FLOOR,
    HEARTBEAT,
    MS,
    NONE_PNL,
    P25_PNL,
    P50_PNL,
    T0,
    Harness,
    build,
    change,
    idle,
    inp,
    running,
    settle,
    until,
)

# the profit lock of a LONG at 100 is 100.2; at 100.001 it is 100.201002: a move far below
# CHANGE_EPS (0.1 %) that still changes the plan_id (it hashes the exact SL)
NUDGED_ENTRY = "100.001"


def as_written(h: Harness, symbol: str) -> dict[str, str]:
    """`symbol`'s proposal hash, checked against its last audit entry: they must say the
    same (a publish: the same fields; a retraction: no hash)."""
    entries = h.sink.audit_of(symbol)
    assert entries, f"no audit entry for {symbol}"
    last = dict(entries[-1])
    fields = h.store.proposals.get(symbol)
    if last.pop("event") == "retract":
        assert fields is None, (fields, last)
        return {}
    assert fields == last, (fields, last)
    return fields


def hash_matches_audit(h: Harness, symbol: str) -> bool:
    try:
        as_written(h, symbol)
    except AssertionError:
        return False
    return True


# -- a resync after a gap ------------------------------------------------------------------


async def test_a_resync_rewrites_a_proposal_that_another_writer_replaced() -> None:
    """The hash exists but is not the last one this runner wrote (another writer's seq):
    after a gap it is written again, though the decision did not change."""
    h = build()
    async with running(h):
        h.clock.advance(20.0)
        ours = dict(h.store.proposals["A"])
        h.store.proposals["A"] = {**ours, "seq": "42", "plan_id": "someone-else"}
        reads = len(h.store.proposal_reads)
        h.source.gap("resubscribed")
        await until(lambda: h.runner.passes == 2)
        await idle(h)
        assert h.store.proposal_reads[reads:] == [list(ABC)]  # re-read at the resync
        fields = as_written(h, "A")
        assert int(fields["seq"]) > int(ours["seq"])
        assert fields["plan_id"] == ours["plan_id"]
        assert fields["harvest_action"] == ours["harvest_action"]
        assert [o.symbol for o in h.sink.batches[1]] == ["A"]  # B and C were in order


async def test_proposals_are_read_again_after_a_resubscribe_and_rewritten_if_gone() -> None:
    """A server restart lost the proposals while the inputs come back unchanged: the
    resync that follows the resubscribe must notice and publish them again."""
    h = build()
    async with running(h):
        startup = {s: h.sink.publishes(s)[0] for s in ABC}
        h.clock.advance(20.0)
        h.store.proposals.clear()
        h.source.gap("resubscribed")
        await until(lambda: h.runner.passes == 2)
        await idle(h)
        assert sorted(h.store.proposals) == list(ABC)
        for symbol in ABC:
            assert as_written(h, symbol)
        for symbol, first in startup.items():
            (again,) = h.sink.publishes(symbol, since=1)
            assert again.plan_id == first.plan_id  # the same decision
            assert again.seq > first.seq


async def test_a_periodic_reconcile_leaves_proposals_that_are_in_order_alone() -> None:
    h = build(reconcile_every=HEARTBEAT / 2)
    async with running(h):
        h.clock.advance(HEARTBEAT / 2)
        await until(lambda: h.runner.passes == 2)
        await idle(h)
        assert len(h.sink.batches) == 1


# -- a proposal and its audit entry: written together or not at all -------------------------


@pytest.mark.parametrize("revert", [False, True], ids=["inputs-unchanged", "inputs-reverted"])
async def test_a_proposal_whose_audit_entry_was_refused_is_never_taken_as_written(
    revert: bool,
) -> None:
    """The transaction replaced the hash but Redis refused the audit entry (the stream
    key holds another type): the runner must not confirm it, and keeps writing the symbol
    until its hash and its audit entry agree, whatever the inputs say by then."""
    h = build()
    async with running(h):
        h.clock.advance(20.0)
        confirmed = h.engine.published("A")
        h.sink.audit_refused = True
        await change(h, "A", inp("A", P25_PNL))
        assert h.store.proposals["A"]["harvest_action"] == "PARTIAL_25"  # the hash changed
        assert not h.sink.audit_of("A")[1:]  # its audit entry did not land
        published = h.engine.published("A")
        assert published is None or published == confirmed  # not taken as written
        if revert:  # back to the decision last confirmed, while still refused
            await change(h, "A", inp("A", NONE_PNL))
        h.sink.audit_refused = False
        h.clock.advance(1.0)  # the refused symbol's retry
        await until(lambda: hash_matches_audit(h, "A"))
        await idle(h)
        fields = as_written(h, "A")
        assert fields["harvest_action"] == ("NONE" if revert else "PARTIAL_25")
        assert h.engine.published("A") == h.sink.publishes("A")[-1].decision


async def test_every_write_is_confirmed_only_once_it_landed_whole() -> None:
    """Across refusals, failures and uncertain outcomes, what the engine takes as
    published is always what the hash and the audit entry both say."""
    h = build()
    async with running(h):
        for step, pnl in enumerate((P25_PNL, P50_PNL, NONE_PNL, P25_PNL)):
            h.clock.advance(20.0)
            if step == 0:
                h.sink.audit_refused = True
            elif step == 1:
                h.sink.fail = 1
            elif step == 2:
                h.sink.uncertain = False
            await change(h, "A", inp("A", pnl))
            h.sink.audit_refused = False
            h.clock.advance(5.0)  # past every retry
            await until(lambda: hash_matches_audit(h, "A"), limit=5.0)
            await idle(h, limit=5.0)
            last = h.sink.publishes("A")[-1]
            assert as_written(h, "A") == last.fields
            assert h.engine.published("A") == last.decision
            assert last.decision.R_net == pytest.approx((pnl - 0.1) / 2)


# -- notifications of every input prefix ----------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("risk", {"stop_dist_pct": "0.01"}),  # R 0.45 -> 0.9
        ("marketstate", {**MS, "p_trend": "0.1", "p_mr": "0.4", "p_chop": "0.5"}),  # K up
        ("position", inp("A", P25_PNL).position),
    ],
    ids=["risk", "marketstate", "position"],
)
async def test_a_notification_on_any_input_key_recomputes_its_symbol(
    kind: str, fields: dict[str, str]
) -> None:
    h = build()
    async with running(h):
        h.clock.advance(20.0)
        h.store.put("A", kind, fields)
        assert h.source.notify(h.source.keys.input_key(kind, "A"))
        await until(lambda: len(h.sink.batches) == 2)
        await idle(h)
        (out,) = h.sink.batches[1]
        assert isinstance(out, PublishOut) and out.symbol == "A"
        assert out.trigger == "change"
        if kind == "risk":
            assert out.fields["risk_source"] == "p1"
            assert out.decision.R_net == pytest.approx(0.9)


async def test_notifications_outside_the_input_prefixes_are_not_delivered() -> None:
    h = build()
    async with running(h):
        fetched = len(h.store.fetches)
        assert not h.source.notify("quantum:other:A")
        assert not h.source.notify(h.source.keys.proposal("A"))  # our own writes
        await settle()
        assert len(h.store.fetches) == fetched


# -- heartbeat, staleness, floor: the timing rules on virtual time ---------------------------


async def test_heartbeat_keeps_the_plan_id_when_the_decision_moved_below_thresholds() -> None:
    h = build(("A",), store=MemoryStore([inp("A", P25_PNL)]))
    async with running(h):
        (first,) = h.sink.publishes("A")
        await change(h, "A", inp("A", P25_PNL, entry_price=NUDGED_ENTRY))
        assert len(h.sink.batches) == 1  # not material: nothing published
        h.clock.advance(HEARTBEAT)
        await until(lambda: len(h.sink.batches) == 2)
        (beat,) = h.sink.publishes("A", since=1)
        assert beat.trigger == "heartbeat" and not beat.material
        assert beat.decision.new_sl_proposed == 100.201002  # the latest decision...
        assert beat.decision != first.decision
        assert beat.plan_id == first.plan_id  # ...under the plan it belongs to
        assert as_written(h, "A")["plan_id"] == first.plan_id
        # were the id computed afresh, it would differ (else this test could not fail)
        gate = h.engine.config.gate
        assert plan_id_for("A", beat.decision, h.engine.theta_id, gate.change_eps) != (
            first.plan_id
        )


async def test_inputs_that_age_past_the_limit_are_retracted_on_time_and_recover() -> None:
    written_at = T0 - 100.0  # MAX_INPUT_AGE_SEC 300: stale at T0 + 200
    aging = {**MS, "ts_timestamp": repr(written_at)}
    h = build(("A",), store=MemoryStore([inp("A", ms=aging)]))
    async with running(h):
        h.clock.advance(199.9)
        await idle(h)
        assert not [o for o in h.sink.outputs if isinstance(o, RetractOut)]
        h.clock.advance(0.1 + 1e-3)
        await until(lambda: any(isinstance(o, RetractOut) for o in h.sink.outputs))
        (out,) = [o for o in h.sink.outputs if isinstance(o, RetractOut)]
        assert out.reason.startswith("stale_marketstate")
        assert T0 + 200.0 < out.at <= h.clock.now()  # at once, no input needed
        assert "A" not in h.store.proposals
        fresh = {**MS, "ts_timestamp": repr(h.clock.now())}
        await change(h, "A", inp("A", ms=fresh), kind="marketstate")
        h.clock.advance(FLOOR)  # the heartbeat at T0 + 199.9 opened a floor window
        await until(lambda: isinstance(h.sink.outputs[-1], PublishOut))
        assert as_written(h, "A")["harvest_action"] == "NONE"
