"""The engine's outputs in the log, at a volume that suits the universe.

`PublishLog` is an `Observer`: every publish and retraction is one INFO line (with its
fields as structured `extra`) while they come at most `max_per_sec` a second
(LOG_PUBLISH_DETAIL_MAX_PER_SEC; a token bucket, so a short burst of that many passes).
Above it the per-symbol lines go to DEBUG, and one INFO line per `interval` says what
happened: publishes per action and per trigger, retractions per reason, deferrals by the
floor. A quiet universe reads symbol by symbol; 1,000 symbols give one line a minute.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from harvest_async.clock import Clock
from harvest_async.core.ports import PublishOut, RetractOut
from harvest_async.service.metrics import reason_label

__all__ = ["SUMMARY_EVERY_SEC", "PublishLog", "Tally"]

log = logging.getLogger(__name__)

SUMMARY_EVERY_SEC = 60.0


@dataclass(slots=True)
class Tally:
    """What one summary interval saw."""

    actions: Counter[str] = field(default_factory=Counter)
    triggers: Counter[str] = field(default_factory=Counter)
    retractions: Counter[str] = field(default_factory=Counter)
    deferrals: int = 0
    demoted: int = 0  # per-symbol lines sent to DEBUG

    def text(self) -> str:
        publishes = sum(self.actions.values())
        parts = [f"{publishes} publishes"]
        if publishes:
            parts[0] += f" ({_counts(self.actions)}; {_counts(self.triggers)})"
        parts.append(f"{sum(self.retractions.values())} retractions")
        if self.retractions:
            parts[1] += f" ({_counts(self.retractions)})"
        parts.append(f"{self.deferrals} deferred by the floor")
        return ", ".join(parts)

    def fields(self) -> dict[str, object]:
        return {
            "event": "summary",
            "publishes": sum(self.actions.values()),
            "actions": dict(self.actions),
            "triggers": dict(self.triggers),
            "retractions": sum(self.retractions.values()),
            "retraction_reasons": dict(self.retractions),
            "deferrals": self.deferrals,
        }


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counter.items()))


class PublishLog:
    """Logs publishes and retractions (an engine Observer), summarised above a rate."""

    def __init__(
        self,
        max_per_sec: float,
        *,
        interval: float = SUMMARY_EVERY_SEC,
        logger: logging.Logger = log,
    ) -> None:
        self.max_per_sec = max_per_sec
        self.interval = interval
        self.log = logger
        self.tally = Tally()
        # the bucket holds a second's worth (at least one line, unless the rate is 0)
        self._burst = max(1.0, max_per_sec) if max_per_sec > 0 else 0.0
        self._tokens = self._burst
        self._refilled_at: float | None = None
        self._interval_start: float | None = None

    # -- Observer ------------------------------------------------------------------------
    def on_publish(self, out: PublishOut) -> None:
        self.roll(out.at)
        decision = out.decision
        self.tally.actions[decision.harvest_action] += 1
        self.tally.triggers[out.trigger] += 1
        level = self._level(out.at)
        if self.log.isEnabledFor(level):
            extra = {
                "event": "publish",
                "symbol": out.symbol,
                "action": decision.harvest_action,
                "trigger": out.trigger,
                "R_net": decision.R_net,
                "kill_score": decision.kill_score,
                "new_sl": decision.new_sl_proposed,
                "plan_id": out.plan_id,
                "seq": out.seq,
            }
            self.log.log(
                level,
                "publish %s trigger=%s action=%s R=%.3f K=%.4f SL=%s reasons=%s plan=%s",
                out.symbol,
                out.trigger,
                decision.harvest_action,
                decision.R_net,
                decision.kill_score,
                out.fields["new_sl_proposed"],
                out.fields["reason_codes"] or "-",
                out.plan_id,
                extra=extra,
            )

    def on_retract(self, out: RetractOut) -> None:
        self.roll(out.at)
        self.tally.retractions[reason_label(out.reason)] += 1
        level = self._level(out.at)
        if self.log.isEnabledFor(level):
            extra = {"event": "retract", "symbol": out.symbol, "reason": out.reason, "seq": out.seq}
            self.log.log(level, "retract %s reason=%s", out.symbol, out.reason, extra=extra)

    def on_defer(self, symbol: str, until: float) -> None:
        self.tally.deferrals += 1  # the why is the engine's DEBUG line

    def on_invalid(self, symbol: str, reason: str) -> None:
        pass  # the engine logs the change of state (WARNING)

    def on_compute(self, seconds: float) -> None:
        pass

    # -- rate and intervals --------------------------------------------------------------
    def _level(self, now: float) -> int:
        """INFO while within the rate (a token left), else DEBUG (and a summary is due)."""
        if self._refilled_at is not None:
            elapsed = max(0.0, now - self._refilled_at)
            self._tokens = min(self._burst, self._tokens + elapsed * self.max_per_sec)
        self._refilled_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return logging.INFO
        self.tally.demoted += 1
        return logging.DEBUG

    def roll(self, now: float, *, final: bool = False) -> None:
        """Close the interval if it is over (or `final`): its summary, if lines went to
        DEBUG in it, then a fresh tally."""
        if self._interval_start is None:
            self._interval_start = now
        if now < self._interval_start + self.interval and not final:
            return
        tally, self.tally = self.tally, Tally()
        seconds, self._interval_start = now - self._interval_start, now
        if tally.demoted:
            fields = {**tally.fields(), "interval_sec": round(seconds, 3)}
            self.log.info(
                "in the last %.0f s: %s (per-symbol lines at DEBUG above "
                "LOG_PUBLISH_DETAIL_MAX_PER_SEC=%g)",
                seconds,
                tally.text(),
                self.max_per_sec,
                extra=fields,
            )

    async def run(self, clock: Clock) -> None:
        """Close intervals on time even when nothing is published (a summary is not held
        back until the next publish)."""
        while True:
            await clock.sleep_until(clock.now() + self.interval / 4)
            self.roll(clock.now())
