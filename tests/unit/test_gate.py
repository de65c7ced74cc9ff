"""Publish rules (docs/publish-rules.md): material change, floor (trailing edge), heartbeat.

`gate` is pure: every test passes `now` explicitly.
"""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harvest_async.core.gate import Defer, GateConfig, Publish, Skip, decide, is_material
from harvest_async.core.models import ACTIONS, Decision, KComponents

T0 = 1_700_000_000.0
CFG = GateConfig()  # floor 10 s, heartbeat 60 s, change_eps 0.001, r_eps 0.05
# thresholds that are exact binary fractions, so "== eps" is exactly representable
EXACT = GateConfig(change_eps=2.0**-10, r_eps=2.0**-4)


def dec(
    action: str = "NONE",
    sl: float | None = None,
    r: float = 1.0,
    k: float = 0.5,
    **other: object,
) -> Decision:
    base = Decision(
        harvest_action=action,  # type: ignore[arg-type]
        new_sl_proposed=sl,
        R_net=r,
        risk_unit=0.2,
        cost_est=0.1,
        kill_score=k,
        reason_codes=(),
        k_components=KComponents(0.0, 0.0, 0.0, 0.0),
        tranche_weights=(1 / 3, 1 / 3, 1 / 3),
    )
    return msgspec.structs.replace(base, **other) if other else base


# -- material change ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prev", "new", "cfg", "material"),
    [
        pytest.param(dec(), dec(), CFG, False, id="identical"),
        pytest.param(dec("NONE"), dec("PARTIAL_25"), CFG, True, id="action-differs"),
        pytest.param(
            dec("PARTIAL_50"), dec("FULL_CLOSE_PROPOSED"), CFG, True, id="action-to-full-close"
        ),
        pytest.param(dec(sl=None), dec(sl=100.2), CFG, True, id="sl-appears"),
        pytest.param(dec(sl=100.2), dec(sl=None), CFG, True, id="sl-disappears"),
        # 1/1000 is exactly the double 0.001: a move of exactly eps is not material
        pytest.param(dec(sl=1000.0), dec(sl=1001.0), CFG, False, id="sl-up-exactly-eps"),
        pytest.param(dec(sl=1000.0), dec(sl=999.0), CFG, False, id="sl-down-exactly-eps"),
        pytest.param(dec(sl=1000.0), dec(sl=1001.01), CFG, True, id="sl-up-above-eps"),
        pytest.param(dec(sl=1000.0), dec(sl=998.99), CFG, True, id="sl-down-above-eps"),
        pytest.param(dec(sl=1000.0), dec(sl=1000.5), CFG, False, id="sl-below-eps"),
        pytest.param(dec(sl=1024.0), dec(sl=1025.0), EXACT, False, id="sl-exact-eps-binary"),
        pytest.param(dec(sl=1024.0), dec(sl=1025.001), EXACT, True, id="sl-above-eps-binary"),
        pytest.param(dec(sl=0.0), dec(sl=0.0), CFG, False, id="sl-zero-unchanged"),
        pytest.param(dec(sl=0.0), dec(sl=1e-9), CFG, True, id="sl-from-zero"),
        pytest.param(dec(k=0.5), dec(k=0.5009), CFG, False, id="k-below-eps"),
        pytest.param(dec(k=0.5), dec(k=0.5011), CFG, True, id="k-above-eps"),
        pytest.param(dec(k=0.5), dec(k=0.4989), CFG, True, id="k-down-above-eps"),
        pytest.param(dec(k=0.5), dec(k=0.5 + 2.0**-10), EXACT, False, id="k-exactly-eps"),
        pytest.param(dec(k=0.5), dec(k=0.5 - 2.0**-10), EXACT, False, id="k-down-exactly-eps"),
        pytest.param(dec(k=0.5), dec(k=0.5 + 2.0**-9), EXACT, True, id="k-above-eps-binary"),
        # K is absolute: a relative move bigger than eps but an absolute one below is not
        pytest.param(dec(k=0.0001), dec(k=0.0009), CFG, False, id="k-absolute-not-relative"),
        pytest.param(dec(r=1.0), dec(r=1.04), CFG, False, id="r-below-eps"),
        pytest.param(dec(r=1.0), dec(r=1.06), CFG, True, id="r-above-eps"),
        pytest.param(dec(r=1.0), dec(r=0.94), CFG, True, id="r-down-above-eps"),
        pytest.param(dec(r=1.0), dec(r=1.0625), EXACT, False, id="r-exactly-eps"),
        pytest.param(dec(r=1.0), dec(r=0.9375), EXACT, False, id="r-down-exactly-eps"),
        pytest.param(dec(r=1.0), dec(r=1.0626), EXACT, True, id="r-above-eps-binary"),
        pytest.param(dec(r=100.0), dec(r=100.04), CFG, False, id="r-absolute-not-relative"),
        # fields that are not part of the rule never make a change material
        pytest.param(dec(), dec(risk_unit=5.0, cost_est=3.0), CFG, False, id="risk-unit-cost"),
        pytest.param(dec(), dec(reason_codes=("x",)), CFG, False, id="reason-codes"),
        pytest.param(
            dec(), dec(k_components=KComponents(1.0, 1.0, 1.0, 1.0)), CFG, False, id="k-parts"
        ),
    ],
)
def test_is_material(prev: Decision, new: Decision, cfg: GateConfig, material: bool) -> None:
    assert is_material(prev, new, cfg) is material


@pytest.mark.parametrize("eps", [0.001, 0.01, 0.1])
def test_sl_threshold_scales_with_change_eps(eps: float) -> None:
    cfg = GateConfig(change_eps=eps)
    assert not is_material(dec(sl=1000.0), dec(sl=1000.0 * (1 + eps / 2)), cfg)
    assert is_material(dec(sl=1000.0), dec(sl=1000.0 * (1 + eps * 2)), cfg)


@given(
    a=st.sampled_from(ACTIONS),
    b=st.sampled_from(ACTIONS),
    sl=st.one_of(st.none(), st.floats(1e-6, 1e9)),
    r=st.floats(-1e6, 1e6),
    k=st.floats(0.0, 1.0),
)
def test_is_material_is_symmetric_for_action_and_sl_presence(
    a: str, b: str, sl: float | None, r: float, k: float
) -> None:
    prev = dec(a, sl=sl, r=r, k=k)
    assert is_material(prev, prev, CFG) is False
    assert is_material(prev, dec(b, sl=sl, r=r, k=k), CFG) is (a != b)
    other_sl = None if sl is not None else 1.0
    assert is_material(prev, dec(a, sl=other_sl, r=r, k=k), CFG)


# -- floor ----------------------------------------------------------------------------


def test_first_publish_is_immediate() -> None:
    assert decide(None, None, dec(), T0, CFG) == Publish("change", True)


@pytest.mark.parametrize("offset", [0.0, 0.001, 3.0, 9.999])
def test_material_change_inside_floor_is_deferred_to_window_end(offset: float) -> None:
    verdict = decide(dec("NONE"), T0, dec("PARTIAL_25"), T0 + offset, CFG)
    assert verdict == Defer(until=T0 + CFG.floor_sec)


@pytest.mark.parametrize("offset", [10.0, 10.001, 30.0, 59.0, 600.0])
def test_material_change_at_or_after_floor_publishes(offset: float) -> None:
    verdict = decide(dec("NONE"), T0, dec("PARTIAL_25"), T0 + offset, CFG)
    assert verdict == Publish("change", True)


@pytest.mark.parametrize("floor", [0.0, 2.5, 30.0])
def test_floor_window_follows_config(floor: float) -> None:
    cfg = GateConfig(floor_sec=floor, heartbeat_sec=60.0)
    change = (dec("NONE"), T0, dec("PARTIAL_25"))
    if floor > 0:
        assert decide(*change, T0 + floor / 2, cfg) == Defer(T0 + floor)
    assert decide(*change, T0 + floor, cfg) == Publish("change", True)


@pytest.mark.parametrize("offset", [0.0, 5.0, 10.0, 59.999])
def test_no_material_change_before_heartbeat_is_skipped(offset: float) -> None:
    verdict = decide(dec(r=1.0), T0, dec(r=1.01), T0 + offset, CFG)
    assert verdict == Skip(next_check=T0 + CFG.heartbeat_sec)


@pytest.mark.parametrize("offset", [60.0, 60.5, 3600.0])
def test_heartbeat_republishes_unchanged_decision(offset: float) -> None:
    verdict = decide(dec(r=1.0), T0, dec(r=1.01), T0 + offset, CFG)
    assert verdict == Publish("heartbeat", False)


def test_material_change_after_heartbeat_is_a_change_not_a_heartbeat() -> None:
    verdict = decide(dec("NONE"), T0, dec("PARTIAL_50"), T0 + 120.0, CFG)
    assert verdict == Publish("change", True)


@pytest.mark.parametrize("offset", [0.0, 1.0, 9.999])
def test_floor_survives_retraction(offset: float) -> None:
    """last=None (hash retracted) but a publish happened inside the window: defer."""
    assert decide(None, T0, dec(), T0 + offset, CFG) == Defer(until=T0 + CFG.floor_sec)


@pytest.mark.parametrize("offset", [10.0, 11.0, 100.0])
def test_after_retraction_publish_once_the_window_is_over(offset: float) -> None:
    assert decide(None, T0, dec(), T0 + offset, CFG) == Publish("change", True)


# -- properties -----------------------------------------------------------------------

decisions = st.builds(
    dec,
    action=st.sampled_from(ACTIONS),
    sl=st.one_of(st.none(), st.floats(1e-3, 1e6)),
    r=st.floats(-1e3, 1e3),
    k=st.floats(0.0, 1.0),
)


@st.composite
def timing(draw: st.DrawFn) -> tuple[GateConfig, float, float]:
    floor = draw(st.floats(0.001, 3600.0))
    heartbeat = floor * draw(st.floats(1.0, 100.0))
    cfg = GateConfig(floor_sec=floor, heartbeat_sec=heartbeat)
    last_at = draw(st.floats(1e6, 4e9))
    now = last_at + floor * draw(st.floats(0.0, 1.0, exclude_max=True))
    return cfg, last_at, now


@settings(max_examples=300)
@given(last=st.one_of(st.none(), decisions), new=decisions, t=timing())
def test_never_publishes_inside_floor_window(
    last: Decision | None, new: Decision, t: tuple[GateConfig, float, float]
) -> None:
    cfg, last_at, now = t
    if not now < last_at + cfg.floor_sec:
        return  # rounding put `now` on the window's end
    verdict = decide(last, last_at, new, now, cfg)
    assert not isinstance(verdict, Publish)
    if isinstance(verdict, Defer):
        assert verdict.until == last_at + cfg.floor_sec
    else:
        assert verdict == Skip(last_at + cfg.heartbeat_sec)


@settings(max_examples=500)
@given(
    last=st.one_of(st.none(), decisions),
    new=decisions,
    floor=st.floats(0.001, 3600.0),
    beats=st.floats(1.0, 100.0),
    last_at=st.floats(1e6, 4e9),
    frac=st.floats(0.0, 1.0, exclude_max=True),
)
def test_deadlines_lie_in_the_future_and_are_final(
    *,
    last: Decision | None,
    new: Decision,
    floor: float,
    beats: float,
    last_at: float,
    frac: float,
) -> None:
    """A Defer/Skip deadline is after `now`, and at that deadline the gate acts (a timer
    that fires exactly on time must never be re-armed at the same instant)."""
    cfg = GateConfig(floor_sec=floor, heartbeat_sec=floor * beats)
    now = last_at + cfg.heartbeat_sec * frac
    verdict = decide(last, last_at, new, now, cfg)
    if isinstance(verdict, Defer):
        assert verdict.until > now
        assert decide(last, last_at, new, verdict.until, cfg) == Publish("change", True)
    elif isinstance(verdict, Skip):
        assert verdict.next_check > now
        assert decide(last, last_at, new, verdict.next_check, cfg) == Publish("heartbeat", False)


# Regression: a fractional PUBLISH_INTERVAL_SEC / MAX_PUBLISH_AGE_SEC is accepted by
# config. Were the gate to return `last + floor` as the deadline but test
# `now - last >= floor`, the sum can round down and the gate would defer again at its own
# deadline (a busy loop on a real clock, a hang on a FakeClock).


def test_fractional_floor_publishes_at_its_own_deadline() -> None:
    cfg = GateConfig(floor_sec=0.3, heartbeat_sec=60.0)
    last_at = 1_700_000_596.853
    verdict = decide(dec("NONE"), last_at, dec("PARTIAL_25"), last_at + 0.1, cfg)
    assert isinstance(verdict, Defer)
    assert decide(dec("NONE"), last_at, dec("PARTIAL_25"), verdict.until, cfg) == Publish(
        "change", True
    )


def test_fractional_heartbeat_publishes_at_its_own_deadline() -> None:
    cfg = GateConfig(floor_sec=10.0, heartbeat_sec=60.3)
    last_at = 1_700_000_140.891
    verdict = decide(dec(), last_at, dec(), last_at + 20.0, cfg)
    assert isinstance(verdict, Skip)
    assert decide(dec(), last_at, dec(), verdict.next_check, cfg) == Publish("heartbeat", False)
