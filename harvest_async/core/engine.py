"""The engine: per-symbol state, kernel, publish rules and timers. No I/O, no clock.

The same `Engine` runs live (driven by `runner.Runner` from Redis notifications) and in
replay (driven by `recording` on a virtual clock): callers feed it input snapshots with
`observe`, ask it what to write with `evaluate`/`due`, and tell it what was written with
`confirm`. Nothing here imports redis or reads time; `now` is always passed in.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from time import perf_counter  # a duration for metrics, not a time of day

from harvest_async.core import gate
from harvest_async.core.engine_config import EngineConfig
from harvest_async.core.input_hashes import (
    Hash,
    MarketPart,
    NoAdvice,
    PositionPart,
    Ready,
    RiskPart,
    SymbolInputs,
)
from harvest_async.core.inputs import evaluate_parsed, parse_market, parse_position, parse_risk
from harvest_async.core.kernel import KernelInputError, compute
from harvest_async.core.models import Decision
from harvest_async.core.ports import NullHooks, Observer, Output, PublishOut, RetractOut
from harvest_async.core.proposal import (
    plan_id_for,
    proposal_fields,
    published_decision,
    theta_id_for,
)
from harvest_async.core.timers import Timers

__all__ = ["Engine", "EngineConfig"]

log = logging.getLogger(__name__)

# states of a symbol's life that are not a problem (a change between two is DEBUG)
_ROUTINE = frozenset({"new", "ok", "no_position", "flat", "zero_quantity"})


@dataclass(slots=True, eq=False)
class _State:
    inputs: SymbolInputs | None = None
    # the three hashes parsed (once per change of each): market, risk, position
    parts: tuple[MarketPart, RiskPart, PositionPart] = (None, None, None)
    published: Decision | None = None  # what the proposal hash says now (None: no hash)
    plan_id: str = ""
    hash_may_exist: bool = False  # a hash (ours or a predecessor's) may be in Redis
    last_publish_at: float | None = None
    seq: int = 0
    status: str = "new"  # "ok" or a NoAdvice reason; logged when it changes
    due: float | None = None
    heap_at: float | None = None
    started: bool = False  # published at least once by this process
    adopt: Hash | None = field(default=None)  # an existing hash to adopt on first evaluation


class Engine:
    def __init__(self, config: EngineConfig, observer: Observer | None = None) -> None:
        self.config = config
        self.observer: Observer = observer or NullHooks()
        self.theta_id = theta_id_for(config.theta)
        self._states: dict[str, _State] = {}
        self._timers = Timers(self._states.get, self._states.items)
        self._allowed = frozenset(config.symbols) if config.symbols is not None else None
        # a publisher group's share (INTERFACE §6): None = every symbol (no group)
        self._owns: Callable[[str], bool] | None = None
        self._needs_quantity = config.theta.r_basis == "position"
        # True during the first full pass: first publishes say trigger=startup
        self.starting = True
        self.adopted = 0  # proposals found in Redis and kept instead of re-published

    # -- queries -------------------------------------------------------------------------
    def symbols(self) -> list[str]:
        return list(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def wants(self, symbol: str) -> bool:
        if self._allowed is not None and symbol not in self._allowed:
            return False
        return self._owns is None or self._owns(symbol)

    @property
    def owns(self) -> Callable[[str], bool] | None:
        return self._owns

    @property
    def scoped(self) -> bool:
        """Whether a publisher group's share limits the symbols (`scope`)."""
        return self._owns is not None

    def scope(self, owns: Callable[[str], bool] | None) -> list[str]:
        """A publisher group's share: from now on only the symbols `owns` accepts are
        tracked. The others' state is dropped at once (what they published stays in Redis
        for their new owner to adopt); returns them."""
        self._owns = owns
        dropped = [s for s in self._states if not self.wants(s)]
        for symbol in dropped:
            del self._states[symbol]  # stale timer entries are skipped (Timers.pop_due)
        return dropped

    def published(self, symbol: str) -> Decision | None:
        state = self._states.get(symbol)
        return state.published if state else None

    def status(self, symbol: str) -> str | None:
        state = self._states.get(symbol)
        return state.status if state else None

    def inputs(self, symbol: str) -> SymbolInputs | None:
        """The input hashes last observed for `symbol` (what the engine holds)."""
        state = self._states.get(symbol)
        return state.inputs if state else None

    def held(self, symbol: str, now: float) -> bool:
        """Whether a change of `symbol` could at most be deferred now (it published within
        the floor): a hint for which symbols to look at first, never a decision."""
        state = self._states.get(symbol)
        if state is None:
            return False
        last = state.last_publish_at
        return last is not None and now < last + self.config.gate.floor_sec

    @property
    def timer_entries(self) -> int:
        """Entries in the deadline heap, stale ones included (bounded: tests, metrics)."""
        return len(self._timers)

    def next_deadline(self) -> float | None:
        return self._timers.next()

    # -- inputs --------------------------------------------------------------------------
    def note_existing(self, symbol: str, fields: Hash) -> None:
        """A proposal hash found in Redis at startup: adopt it if it still matches."""
        if not self.wants(symbol):
            return
        state = self._state(symbol)
        state.hash_may_exist = True
        state.adopt = fields
        with contextlib.suppress(ValueError):
            state.seq = max(state.seq, int(fields.get("seq", "0")))

    def check_published(self, symbol: str, fields: Hash | None) -> bool:
        """The proposal hash as read at a resync after a gap (None: no hash).

        If it is not what this engine last wrote (the server restarted and lost it, or
        someone deleted or replaced it), forget the published decision, so that the next
        evaluation writes it again instead of finding nothing material to publish; then
        True (the rounds report how many came back).
        """
        if not self.wants(symbol):
            return False
        state = self._states.get(symbol)
        if state is None:
            if fields:
                self._state(symbol).hash_may_exist = True  # not ours: retract or replace
            return False
        lost = state.published is not None and (
            fields is None or fields.get("seq") != str(state.seq)
        )
        if lost:
            log.debug(
                "%s: the proposal in Redis is not the last one written (seq %d)",
                symbol,
                state.seq,
                extra={"symbol": symbol, "seq": state.seq},
            )
            state.published = None
        if state.published is None:
            state.hash_may_exist = bool(fields)
        return lost

    def unsure(self, symbols: Iterable[str]) -> None:
        """A refused write was applied in part (its hash changed, its audit entry did not
        land): the next evaluation writes the symbol again, whatever it last confirmed."""
        for symbol in symbols:
            state = self._states.get(symbol)
            if state is not None:
                state.published = None
                state.hash_may_exist = True

    def observe(self, inputs: SymbolInputs) -> bool:
        """Store the latest inputs; True if they differ from what the engine had.

        Only the hashes that changed are parsed again (a change is usually one of three).
        """
        symbol = inputs.symbol
        if self._allowed is not None and symbol not in self._allowed:
            return False
        if self._owns is not None and not self._owns(symbol):
            return False  # a group member's: not ours (any more)
        state = self._states.get(symbol)
        market_raw, risk_raw, position_raw = inputs.marketstate, inputs.risk, inputs.position
        if state is None:
            if position_raw is None and market_raw is None and risk_raw is None:
                return False  # nothing here and nothing published: do not track
            state = self._state(symbol)
        old = state.inputs
        if old is None:
            market_new = risk_new = position_new = True
        else:
            # a notification only says "look again": compare before recomputing. A hash
            # not read again is the very object held: no need to compare its fields
            old_market, old_risk, old_position = old.marketstate, old.risk, old.position
            market_new = market_raw is not old_market and market_raw != old_market
            risk_new = risk_raw is not old_risk and risk_raw != old_risk
            position_new = position_raw is not old_position and position_raw != old_position
            if not (market_new or risk_new or position_new):
                return False
        market, risk, position = state.parts
        if market_new:
            market = parse_market(market_raw)
        if risk_new:
            risk = parse_risk(risk_raw)
        if position_new:
            position = parse_position(position_raw, symbol, needs_quantity=self._needs_quantity)
        state.parts = (market, risk, position)
        state.inputs = inputs
        return True

    # -- decisions -----------------------------------------------------------------------
    def evaluate(self, symbol: str, now: float) -> Output | None:
        """Recompute one symbol and apply the publish rules. Does not change what is
        considered published: call `confirm` once the output is written."""
        state = self._states.get(symbol)
        if state is None:
            return None
        try:
            result = self._decide(symbol, state, now)
        except Exception:  # one symbol's bug must never stop the others
            extra = {"symbol": symbol}
            log.exception("internal error computing %s; retracting it", symbol, extra=extra)
            result = NoAdvice("internal_error", "see the service log")
        if isinstance(result, NoAdvice):
            return self._no_advice(symbol, state, result, now)
        return result

    def _decide(self, symbol: str, state: _State, now: float) -> Output | NoAdvice | None:
        cfg = self.config
        market, risk, position = state.parts
        ready = evaluate_parsed(
            symbol,
            market,
            risk,
            position,
            now,
            max_input_age_sec=cfg.max_input_age_sec,
            max_clock_skew_sec=cfg.max_clock_skew_sec,
            synthetic_positions=cfg.synthetic_positions,
        )
        if isinstance(ready, NoAdvice):
            return ready
        started = perf_counter()
        try:
            decision = compute(ready.position, ready.market, ready.risk, cfg.theta)
        except KernelInputError as exc:
            return NoAdvice("invalid_input", str(exc))
        self.observer.on_compute(perf_counter() - started)
        self._set_status(symbol, state, "ok", "inputs valid again")
        if state.adopt is not None:
            adopted = self._try_adopt(state, decision, now)
            state.adopt = None
            if adopted:
                assert state.last_publish_at is not None
                heartbeat_at = state.last_publish_at + cfg.gate.heartbeat_sec
                self._schedule(symbol, state, self._sooner(state, ready, heartbeat_at))
                return None
        verdict = gate.decide(state.published, state.last_publish_at, decision, now, cfg.gate)
        if isinstance(verdict, gate.Defer | gate.Skip):
            when = self._hold(symbol, state, decision, verdict)
            self._schedule(symbol, state, self._sooner(state, ready, when))
            return None
        trigger = verdict.trigger
        if not state.started and self.starting:
            trigger = "startup"
        plan_id = (
            plan_id_for(symbol, decision, self.theta_id, cfg.gate.change_eps)
            if verdict.material or not state.plan_id
            else state.plan_id
        )
        seq = self._next_seq(state, now)
        fields = proposal_fields(
            symbol,
            ready,
            decision,
            now=now,
            plan_id=plan_id,
            seq=seq,
            trigger=trigger,
            theta_id=self.theta_id,
            ttl=cfg.proposal_ttl_sec,
        )
        # until confirmed, re-check at the heartbeat (or staleness) like any published symbol
        self._schedule(symbol, state, self._sooner(state, ready, now + cfg.gate.heartbeat_sec))
        return PublishOut(symbol, fields, decision, plan_id, seq, now, trigger, verdict.material)

    def _hold(
        self, symbol: str, state: _State, new: Decision, verdict: gate.Defer | gate.Skip
    ) -> float:
        """Report a decision not published now (why, at DEBUG); when to look again."""
        deferred = isinstance(verdict, gate.Defer)
        until = verdict.until if isinstance(verdict, gate.Defer) else verdict.next_check
        if log.isEnabledFor(logging.DEBUG):
            why = gate.held_text(state.published, new, verdict, self.config.gate)
            extra = {"symbol": symbol, "event": "defer" if deferred else "skip", "until": until}
            log.debug("%s: %s", symbol, why, extra=extra)
        if deferred:
            self.observer.on_defer(symbol, until)
        return until

    def _sooner(self, state: _State, ready: Ready, when: float | None) -> float | None:
        """`when`, or just after the inputs go stale if that comes first."""
        stale = ready.stale_at
        if stale is not None and (when is None or stale < when):
            return stale + 1e-6  # just past the limit, so the check sees it stale
        return when

    def _try_adopt(self, state: _State, decision: Decision, now: float) -> bool:
        fields = state.adopt
        assert fields is not None
        found = published_decision(fields)
        if found is None:
            return False  # not our format (e.g. the original publisher's): replace it
        previous, plan_id, at = found
        same_theta = fields.get("theta_id") == self.theta_id
        fresh = 0.0 <= now - at < self.config.gate.heartbeat_sec
        if not (fresh and same_theta) or gate.is_material(previous, decision, self.config.gate):
            return False
        state.published = previous
        state.plan_id = plan_id
        state.last_publish_at = at
        self.adopted += 1
        extra = {"symbol": fields.get("symbol"), "event": "adopt", "plan_id": plan_id}
        log.debug(
            "%s: adopted the proposal in Redis (plan_id=%s)", extra["symbol"], plan_id, extra=extra
        )
        return True

    def _no_advice(self, symbol: str, state: _State, why: NoAdvice, now: float) -> Output | None:
        if why.invalid:
            if state.status != why.reason:
                self.observer.on_invalid(symbol, why.reason)
            self._set_status(symbol, state, why.reason, why.detail, level=logging.WARNING)
        else:
            self._set_status(symbol, state, why.reason, why.detail)
        state.adopt = None
        # a reason that ends with time (an input stamped ahead of the clock) is re-checked
        # just past its end; any other ends only with new input
        recheck = why.recheck_at
        self._schedule(symbol, state, None if recheck is None else recheck + 1e-6)
        if state.published is None and not state.hash_may_exist:
            return None
        return RetractOut(symbol, why.text(), self._next_seq(state, now), now)

    def _set_status(
        self, symbol: str, state: _State, status: str, detail: str, level: int = logging.INFO
    ) -> None:
        if state.status == status:
            return
        if state.status in _ROUTINE and status in _ROUTINE:
            level = logging.DEBUG  # a position opening or closing: the publish log says so
        if state.status != "new" or status != "ok":
            extra = {"symbol": symbol, "event": "status", "reason": status}
            log.log(level, "%s: %s -> %s (%s)", symbol, state.status, status, detail, extra=extra)
        state.status = status

    def _next_seq(self, state: _State, now: float) -> int:
        # Millisecond time as a floor keeps seq increasing across restarts even when the
        # previous hash is gone (retracted); +1 keeps it strictly increasing within one.
        return max(state.seq + 1, int(now * 1000))

    # -- timers --------------------------------------------------------------------------
    def _schedule(self, symbol: str, state: _State, when: float | None) -> None:
        self._timers.set(symbol, state, when, len(self._states))

    def due(self, now: float) -> list[str]:
        """Symbols whose trailing edge, heartbeat or staleness time has come."""
        return self._timers.pop_due(now)

    def retry_later(self, symbols: Iterable[str], when: float) -> None:
        """A write failed: evaluate these symbols again at `when`."""
        for symbol in symbols:
            state = self._states.get(symbol)
            if state is not None:
                self._schedule(symbol, state, when)

    # -- after a write -------------------------------------------------------------------
    def confirm(self, outputs: Sequence[Output]) -> None:
        for out in outputs:
            state = self._states.get(out.symbol)
            if state is None:
                continue
            state.seq = max(state.seq, out.seq)
            if isinstance(out, PublishOut):
                state.published = out.decision
                state.plan_id = out.plan_id
                state.last_publish_at = out.at
                state.hash_may_exist = True
                state.started = True
                self.observer.on_publish(out)  # the observer logs it (service.publish_log)
            else:
                state.published = None
                state.hash_may_exist = False
                self.observer.on_retract(out)
                if state.inputs is None or state.inputs.position is None:
                    self._forget(out.symbol, state, out.at)

    def forget_absent(self, symbol: str, now: float | None = None) -> None:
        """Drop a symbol with no position and nothing published (bounded memory under '*').

        One that published within the floor window is kept until `now` is past it: the
        floor must still hold back a publish if its position comes straight back."""
        if self.config.synthetic_positions:
            return  # no position key is the normal case there, not a reason to forget
        state = self._states.get(symbol)
        if state is not None and state.published is None and not state.hash_may_exist:
            inputs = state.inputs
            if inputs is None or inputs.position is None:
                self._forget(symbol, state, now)

    def _forget(self, symbol: str, state: _State, now: float | None) -> None:
        # The seq floor is time based, so forgetting the counter is safe once the clock
        # has passed it (a burst without a floor can run seq ahead of the clock).
        last = state.last_publish_at
        floor = self.config.gate.floor_sec
        if last is not None and floor > 0 and (now is None or now < last + floor):
            return  # keep the floor's memory of the last publish
        if now is not None and state.seq >= int(now * 1000):
            return  # a new counter would start at or below the last seq written
        self._states.pop(symbol, None)

    def _state(self, symbol: str) -> _State:
        state = self._states.get(symbol)
        if state is None:
            state = self._states[symbol] = _State()
        return state
