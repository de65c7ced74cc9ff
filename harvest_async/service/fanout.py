"""Several receivers behind one `Observer` / `RunnerHooks` (metrics, the publish log, a
caller's own), so the engine and the runner each report to one object."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from harvest_async.core.ports import Observer, PublishOut, RetractOut, RunnerHooks

__all__ = ["Fanout", "ObserverAndHooks", "combine", "fan_out"]


class Fanout:
    """Forwards every Observer and RunnerHooks call to several receivers."""

    def __init__(self, observers: Iterable[Observer], hooks: Iterable[RunnerHooks]) -> None:
        self.observers = tuple(observers)
        self.hooks = tuple(hooks)

    def on_publish(self, out: PublishOut) -> None:
        for o in self.observers:
            o.on_publish(out)

    def on_retract(self, out: RetractOut) -> None:
        for o in self.observers:
            o.on_retract(out)

    def on_defer(self, symbol: str, until: float) -> None:
        for o in self.observers:
            o.on_defer(symbol, until)

    def on_invalid(self, symbol: str, reason: str) -> None:
        for o in self.observers:
            o.on_invalid(symbol, reason)

    def on_compute(self, seconds: float) -> None:
        for o in self.observers:
            o.on_compute(seconds)

    def on_event(self, kind: str) -> None:
        for h in self.hooks:
            h.on_event(kind)

    def on_resync(self, reason: str) -> None:
        for h in self.hooks:
            h.on_resync(reason)

    def on_latency(self, seconds: float) -> None:
        for h in self.hooks:
            h.on_latency(seconds)

    def on_cycle(self, tracked: int) -> None:
        for h in self.hooks:
            h.on_cycle(tracked)


def fan_out(*observers: Observer | None) -> Observer | None:
    """One Observer for those given (None: none given)."""
    present = [o for o in observers if o is not None]
    if len(present) <= 1:
        return present[0] if present else None
    return Fanout(present, [])


class ObserverAndHooks(Observer, RunnerHooks, Protocol):
    """Both at once (the metrics)."""


def combine(
    both: ObserverAndHooks, observer: Observer | None, hooks: RunnerHooks | None
) -> tuple[Observer, RunnerHooks]:
    """`both` (an Observer and RunnerHooks, e.g. the metrics) plus the caller's own
    observer/hooks, if any."""
    obs: Observer = both if observer is None else Fanout([both, observer], [])
    hks: RunnerHooks = both if hooks is None else Fanout([], [both, hooks])
    return obs, hks
