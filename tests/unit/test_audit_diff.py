"""`replay --against-audit`: the per-symbol alignment of decisions and its edge rules."""

from __future__ import annotations

import msgspec

from harvest_async.replay.audit_decisions import AuditCollector, Decision, decision_of
from harvest_async.replay.audit_diff import diff
from harvest_async.replay.audit_report import format_jsonl, format_text

START, END, TOL = 1000.0, 2000.0, 10.0


def pub(
    at: float, action: str = "NONE", plan: str = "p1", sl: str = "None", **kw: object
) -> Decision:
    return Decision(at, "publish", action=action, new_sl=sl, plan_id=plan, trigger="change", **kw)  # type: ignore[arg-type]


def ret(at: float, reason: str = "flat: position side is FLAT") -> Decision:
    return Decision(at, "retract", reason=reason)


def kinds(replay: list[Decision], audit: list[Decision]) -> list[tuple[str, float, bool]]:
    result = diff({"S": replay}, {"S": audit}, start=START, end=END, tolerance=TOL)
    return [(d.kind, d.at, d.counted) for d in result.differences]


def test_the_same_decisions_within_the_tolerance_agree() -> None:
    replay = [pub(1100), ret(1200), pub(1300, "PARTIAL_25", "p2", "100.2")]
    audit = [pub(1100.004), ret(1200.002), pub(1309.9, "PARTIAL_25", "p2", "100.2")]
    result = diff({"S": replay}, {"S": audit}, start=START, end=END, tolerance=TOL)
    assert result.agrees and result.differences == []
    assert result.symbols[0].agree == 3


def test_a_decision_missing_on_either_side() -> None:
    base = [pub(1100), pub(1200, "PARTIAL_25", "p2"), pub(1300, "PARTIAL_50", "p3")]
    assert kinds(base, [base[0], base[2]]) == [("only_replay", 1200, True)]
    assert kinds([base[0], base[2]], base) == [("only_audit", 1200, True)]
    assert kinds([], base[:1]) == [("only_audit", 1100, True)]


def test_a_deleted_publish_between_two_with_the_same_plan_is_one_difference() -> None:
    # R_net moves are material but keep the plan_id: neighbours look alike, and only
    # the time tells which one is missing
    replay = [pub(1100), pub(1120), pub(1140), pub(1160)]
    audit = [replay[0], replay[2], replay[3]]
    assert kinds(replay, audit) == [("only_replay", 1120, True)]


def test_different_decisions_at_the_same_time() -> None:
    result = diff(
        {"S": [pub(1100), pub(1200, "PARTIAL_25", "p2", "100.2"), ret(1300, "flat: x")]},
        {"S": [pub(1100), pub(1201, "PARTIAL_50", "p9", "100.2"), ret(1300, "no_position: y")]},
        start=START,
        end=END,
        tolerance=TOL,
    )
    found = [(d.kind, d.detail) for d in result.differences]
    assert found == [
        ("differs", "action, plan_id"),
        ("retraction_differs", "retraction reason"),
    ]
    assert not result.agrees
    assert result.symbols[0].counts["differs"] == 1


def test_a_retraction_against_a_publish_differs() -> None:
    result = diff(
        {"S": [pub(1100), ret(1200)]},
        {"S": [pub(1100), pub(1203, "PARTIAL_25", "p2")]},
        start=START,
        end=END,
        tolerance=TOL,
    )
    assert [(d.kind, d.detail) for d in result.differences] == [
        ("differs", "replay retract, audit publish")
    ]


def test_the_same_decision_too_far_apart_is_a_timing_difference() -> None:
    result = diff(
        {"S": [pub(1100), pub(1200, "PARTIAL_25", "p2")]},
        {"S": [pub(1100), pub(1225, "PARTIAL_25", "p2")]},
        start=START,
        end=END,
        tolerance=TOL,
    )
    assert [(d.kind, d.detail) for d in result.differences] == [
        ("timing", "-25.000 s (replay - audit)")
    ]


def test_the_live_state_at_the_start_matches_the_startup_publish_by_action_and_sl() -> None:
    startup = Decision(
        START, "publish", action="NONE", new_sl="None", plan_id="a", trigger="startup"
    )
    live = Decision(START, "publish", action="NONE", new_sl="None", plan_id="b", start_state=True)
    assert kinds([startup], [live]) == []  # plan_id may differ there
    other = msgspec.structs.replace(live, action="PARTIAL_25")
    assert kinds([startup], [other]) == [("start_state", START, True)]
    assert kinds([startup], []) == [("start_state", START, True)]  # live had no advice
    assert kinds([], [live]) == [("start_state", START, True)]  # the replay has none


def test_a_live_state_superseded_right_after_the_start_is_no_difference() -> None:
    # a change written just before the start: the replay's startup already has it, the
    # live service published it a few milliseconds after the start
    startup = Decision(
        START, "publish", action="PARTIAL_25", new_sl="None", plan_id="n", trigger="startup"
    )
    old = Decision(START, "publish", action="NONE", new_sl="None", plan_id="o", start_state=True)
    new = pub(START + 0.003, "PARTIAL_25", "n")
    assert kinds([startup], [old, new]) == []


def test_one_sided_decisions_at_the_very_end_are_shown_not_counted() -> None:
    result = diff(
        {"S": [pub(1100)]},
        {"S": [pub(1100), pub(END - 2, "PARTIAL_25", "p2")]},
        start=START,
        end=END,
        tolerance=TOL,
    )
    assert [(d.kind, d.counted) for d in result.differences] == [("only_audit", False)]
    assert result.agrees


def test_the_collector_keeps_the_window_and_the_state_before_it() -> None:
    collector = AuditCollector(START, END, frozenset({"S", "T"}))

    def entry(
        symbol: str, at: float, trigger: str = "change", event: str = "publish"
    ) -> dict[str, str]:
        return {
            "event": event,
            "symbol": symbol,
            "ts_epoch": repr(at),
            "harvest_action": "NONE",
            "new_sl_proposed": "None",
            "plan_id": f"p{at:g}",
            "trigger": trigger,
            "reason": "flat: x",
        }

    collector.add_all(
        [
            ("1-0", entry("S", 900)),
            ("2-0", entry("S", 990, trigger="heartbeat")),  # the live state at the start
            ("3-0", entry("T", 995, event="retract")),  # no advice at the start
            ("4-0", entry("X", 1100)),  # another symbol: not asked for
            ("5-0", entry("S", 1100, trigger="heartbeat")),  # not a decision
            ("6-0", entry("S", 1200)),
            ("7-0", entry("S", 2100)),  # after the end
            ("8-0", {"event": "liveness", "symbol": "S", "ts_epoch": "1300"}),
        ]
    )
    sides = collector.sides()
    assert list(sides) == ["S"]
    first, second = sides["S"]
    assert first.start_state and first.at == START and first.plan_id == "p990"
    assert second.at == 1200 and second.ref == "6-0"
    assert collector.first_at == 900


def test_decision_of_reads_audit_fields() -> None:
    assert decision_of({"event": "publish", "ts_epoch": "nan"}) is None
    assert decision_of({"event": "publish"}) is None
    assert decision_of({"event": "other", "ts_epoch": "1"}) is None
    assert decision_of(
        {"event": "retract", "ts_epoch": "5", "reason": "stale_marketstate: 301 s"}
    ) == ret(5.0, "stale_marketstate: 301 s")


def test_reports() -> None:
    result = diff(
        {"S": [pub(1100), pub(1200, "PARTIAL_25", "p2")], "T": [pub(1100)]},
        {"S": [pub(1100)], "T": [pub(1100)]},
        start=START,
        end=END,
        tolerance=TOL,
    )
    text = format_text(result, replay_label="rec.jsonl", audit_label="audit.jsonl")
    assert "symbol  replay  audit  agree  only-replay" in text
    assert "+200.000 s" in text and "S: only in the replay" in text
    assert text.endswith("DIFFER: 1 differences in 1 of 2 symbols\n")
    lines = [msgspec.json.decode(x) for x in format_jsonl(result).splitlines()]
    assert [x["type"] for x in lines] == ["difference", "symbol", "symbol", "summary"]
    assert lines[0]["kind"] == "only_replay" and lines[0]["replay"]["plan_id"] == "p2"
    assert lines[-1]["agrees"] is False and lines[-1]["only_replay"] == 1
