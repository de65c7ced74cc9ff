"""Prometheus metrics: one object that is both the engine's `Observer` and the runner's
`RunnerHooks`, on a `CollectorRegistry` of its own (never the global one), served on
`METRICS_ADDR` (default 127.0.0.1) by `metrics_server.serve_metrics` when `METRICS_PORT`
is set.

Cardinality: per-symbol series (kill score and its components, R_net, action, input ages)
exist only for the first `symbol_cap` symbols that have a proposal (`METRICS_SYMBOL_CAP`,
default 50). A retraction frees the symbol's slot and removes its series, so "first" means
first among the symbols currently published. Everything else is labelled by small fixed
sets (input kind, trigger, action, retraction reason).
"""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from harvest_async import __version__
from harvest_async.core.models import Theta
from harvest_async.core.ports import PublishOut, RetractOut

__all__ = ["ACTION_CODES", "METRIC_NAMES", "Metrics", "reason_label"]

# harvest_symbol_action's value: ordered by how much of the position is proposed to close
ACTION_CODES: dict[str, int] = {
    "NONE": 0,
    "PARTIAL_25": 1,
    "PARTIAL_50": 2,
    "PARTIAL_75": 3,
    "FULL_CLOSE_PROPOSED": 4,
}

COMPONENTS = ("regime_flip", "sigma_spike", "ts_drop", "age_penalty")

# Retractions whose reason only says "there is no position": normal, not a problem state.
_POSITION_GONE = frozenset({"no_position", "flat", "zero_quantity"})

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
COMPUTE_BUCKETS = (
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2,
)  # fmt: skip

# Every metric family this module exports (besides process_* and python_*), as the
# exposition names them; the endpoint test checks each one is served.
METRIC_NAMES: tuple[str, ...] = (
    "harvest_input_events_total",
    "harvest_publishes_total",
    "harvest_retractions_total",
    "harvest_invalid_inputs_total",
    "harvest_resyncs_total",
    "harvest_reconnects_total",
    "harvest_event_to_publish_latency_seconds",
    "harvest_compute_seconds",
    "harvest_tracked_symbols",
    "harvest_last_publish_timestamp_seconds",
    "harvest_symbols",
    "harvest_symbol_kill_score",
    "harvest_symbol_r_net",
    "harvest_symbol_action",
    "harvest_symbol_kill_component",
    "harvest_symbol_input_age_seconds",
    "harvest_kill_threshold",
    "harvest_kill_weight",
    "harvest_ladder_trigger_r",
    "harvest_floor_seconds",
    "harvest_heartbeat_seconds",
    "harvest_metrics_symbol_cap",
    "harvest_build_info",
)


def reason_label(reason: str) -> str:
    """`stale_marketstate: market state is 900 s old` -> `stale_marketstate`."""
    return reason.split(":", 1)[0].strip() or "unknown"


class Metrics:
    """Implements `engine.Observer` and `runner.RunnerHooks`; all calls are O(1)."""

    def __init__(
        self,
        *,
        symbol_cap: int = 50,
        theta: Theta | None = None,
        floor_sec: float = 10.0,
        heartbeat_sec: float = 60.0,
        registry: CollectorRegistry | None = None,
        process_metrics: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.symbol_cap = max(0, symbol_cap)
        reg = self.registry
        if process_metrics:
            # process_* (CPU, memory, fds, start time: the restart-loop alert uses it) and
            # python_*; both read /proc, which ProcSubset=pid would hide
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
            reg.register(GC_COLLECTOR)
        self._declare_activity(reg)
        self._declare_per_symbol(reg)
        # the configuration in force, so dashboards and alerts use the real values
        _declare_settings(reg, theta or Theta(), floor_sec, heartbeat_sec, self.symbol_cap)

        # hot-path children, bound once
        self._event_children: dict[str, Any] = {}
        self._state: dict[str, str] = {}  # symbol -> state label (see harvest_symbols)
        self._admitted: set[str] = set()  # symbols with per-symbol series

    def _declare_activity(self, reg: CollectorRegistry) -> None:
        """What happens: events, outputs, resyncs, latencies, symbols by state."""
        self.input_events = Counter(
            "harvest_input_events",
            "Input change signals received (keyspace notifications, stream entries), by kind.",
            ["kind"],
            registry=reg,
        )
        self.publishes = Counter(
            "harvest_publishes",
            "Proposals written, by trigger (startup/change/heartbeat) and action.",
            ["trigger", "action"],
            registry=reg,
        )
        self.retractions = Counter(
            "harvest_retractions",
            "Proposals retracted (hash deleted), by reason.",
            ["reason"],
            registry=reg,
        )
        self.invalid = Counter(
            "harvest_invalid_inputs",
            "Symbols whose inputs became invalid (counted once per change of state), by reason.",
            ["reason"],
            registry=reg,
        )
        self.resyncs = Counter(
            "harvest_resyncs",
            "Full resyncs of every symbol, by reason (startup, resubscribed, poll, ...).",
            ["reason"],
            registry=reg,
        )
        self.reconnects = Counter(
            "harvest_reconnects",
            "Re-subscriptions to Redis notifications after a lost connection or silent canary.",
            registry=reg,
        )
        self.latency = Histogram(
            "harvest_event_to_publish_latency_seconds",
            "From the first change signal of a symbol to its proposal being written.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.compute = Histogram(
            "harvest_compute_seconds",
            "Kernel compute time per symbol evaluation.",
            buckets=COMPUTE_BUCKETS,
            registry=reg,
        )
        self.tracked = Gauge(
            "harvest_tracked_symbols", "Symbols the engine currently tracks.", registry=reg
        )
        self.last_publish = Gauge(
            "harvest_last_publish_timestamp_seconds",
            "Epoch seconds of the last proposal written (0: none yet by this process).",
            registry=reg,
        )
        self.symbol_states = Gauge(
            "harvest_symbols",
            "Symbols by the state of their proposal: published, or the reason it is retracted "
            "(stale_*, invalid_*, missing_marketstate, ...). Symbols without a position are "
            "not counted.",
            ["state"],
            registry=reg,
        )

    def _declare_per_symbol(self, reg: CollectorRegistry) -> None:
        """The current proposal of each of the first `symbol_cap` symbols."""
        self.kill_score = Gauge(
            "harvest_symbol_kill_score",
            "Kill score of the symbol's current proposal (first METRICS_SYMBOL_CAP symbols).",
            ["symbol"],
            registry=reg,
        )
        self.r_net = Gauge(
            "harvest_symbol_r_net",
            "R_net of the symbol's current proposal (first METRICS_SYMBOL_CAP symbols).",
            ["symbol"],
            registry=reg,
        )
        self.action = Gauge(
            "harvest_symbol_action",
            "Action of the symbol's current proposal: 0 NONE, 1 PARTIAL_25, 2 PARTIAL_50, "
            "3 PARTIAL_75, 4 FULL_CLOSE_PROPOSED (first METRICS_SYMBOL_CAP symbols).",
            ["symbol"],
            registry=reg,
        )
        self.components = Gauge(
            "harvest_symbol_kill_component",
            "Unweighted kill-score component of the current proposal; multiply by "
            "harvest_kill_weight for its contribution (first METRICS_SYMBOL_CAP symbols).",
            ["symbol", "component"],
            registry=reg,
        )
        self.input_age = Gauge(
            "harvest_symbol_input_age_seconds",
            "Age of the symbol's market state / position snapshot when its proposal was "
            "computed (first METRICS_SYMBOL_CAP symbols).",
            ["symbol", "input"],
            registry=reg,
        )

    # -- engine.Observer -----------------------------------------------------------------
    def on_publish(self, out: PublishOut) -> None:
        decision = out.decision
        self.publishes.labels(out.trigger, decision.harvest_action).inc()
        self.last_publish.set(out.at)
        self._move(out.symbol, "published")
        symbol = out.symbol
        if symbol not in self._admitted:
            if len(self._admitted) >= self.symbol_cap:
                return
            self._admitted.add(symbol)
        self.kill_score.labels(symbol).set(decision.kill_score)
        self.r_net.labels(symbol).set(decision.R_net)
        self.action.labels(symbol).set(ACTION_CODES.get(decision.harvest_action, -1))
        k = decision.k_components
        for name, value in zip(
            COMPONENTS, (k.regime_flip, k.sigma_spike, k.ts_drop, k.age_penalty), strict=True
        ):
            self.components.labels(symbol, name).set(value)
        for name, field in (
            ("marketstate", "marketstate_age_sec"),
            ("position", "position_snapshot_age_sec"),
        ):
            raw = out.fields.get(field, "")
            try:
                self.input_age.labels(symbol, name).set(float(raw))
            except ValueError:
                _remove(self.input_age, (symbol, name))

    def on_retract(self, out: RetractOut) -> None:
        label = reason_label(out.reason)
        self.retractions.labels(label).inc()
        self._move(out.symbol, None if label in _POSITION_GONE else label)
        symbol = out.symbol
        if symbol in self._admitted:
            self._admitted.discard(symbol)
            for gauge in (self.kill_score, self.r_net, self.action):
                _remove(gauge, (symbol,))
            for name in COMPONENTS:
                _remove(self.components, (symbol, name))
            for name in ("marketstate", "position"):
                _remove(self.input_age, (symbol, name))

    def on_defer(self, symbol: str, until: float) -> None:
        pass  # a deferral is not an output; the publish that ends it is counted

    def on_invalid(self, symbol: str, reason: str) -> None:
        self.invalid.labels(reason).inc()

    def on_compute(self, seconds: float) -> None:
        self.compute.observe(seconds)

    # -- runner.RunnerHooks --------------------------------------------------------------
    def on_event(self, kind: str) -> None:
        child = self._event_children.get(kind)
        if child is None:
            child = self._event_children[kind] = self.input_events.labels(kind)
        child.inc()

    def on_resync(self, reason: str) -> None:
        self.resyncs.labels(reason).inc()
        if reason == "resubscribed":
            self.reconnects.inc()

    def on_latency(self, seconds: float) -> None:
        self.latency.observe(seconds)

    def on_cycle(self, tracked: int) -> None:
        self.tracked.set(tracked)

    # -- helpers -------------------------------------------------------------------------
    def _move(self, symbol: str, state: str | None) -> None:
        old = self._state.get(symbol)
        if old == state:
            return
        if old is not None:
            self.symbol_states.labels(old).dec()
        if state is None:
            self._state.pop(symbol, None)
        else:
            self._state[symbol] = state
            self.symbol_states.labels(state).inc()

    @property
    def per_symbol(self) -> frozenset[str]:
        """Symbols that currently have per-symbol series."""
        return frozenset(self._admitted)


def _remove(gauge: Gauge, labels: tuple[str, ...]) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)


def _declare_settings(
    reg: CollectorRegistry, theta: Theta, floor_sec: float, heartbeat_sec: float, cap: int
) -> None:
    """The settings in force as gauges (the alerts and the dashboard read them)."""
    Gauge(
        "harvest_kill_threshold",
        "Kill score at or above which FULL_CLOSE_PROPOSED is proposed.",
        registry=reg,
    ).set(theta.kill_threshold)
    weights = Gauge(
        "harvest_kill_weight",
        "Weight of each kill-score component (kill = sigmoid(sum of weight * component)).",
        ["component"],
        registry=reg,
    )
    for name in COMPONENTS:
        weights.labels(name).set(getattr(theta, f"k_{name}"))
    ladder = Gauge(
        "harvest_ladder_trigger_r",
        "R_net at which each partial-exit tranche triggers (T1_R, T2_R, T3_R).",
        ["tranche"],
        registry=reg,
    )
    for i, value in enumerate((theta.T1_R, theta.T2_R, theta.T3_R), 1):
        ladder.labels(str(i)).set(value)
    Gauge(
        "harvest_floor_seconds",
        "PUBLISH_INTERVAL_SEC: at most one publish per symbol per this many seconds.",
        registry=reg,
    ).set(floor_sec)
    Gauge(
        "harvest_heartbeat_seconds",
        "MAX_PUBLISH_AGE_SEC: a proposal is re-published at least this often.",
        registry=reg,
    ).set(heartbeat_sec)
    Gauge(
        "harvest_metrics_symbol_cap",
        "METRICS_SYMBOL_CAP: how many symbols get per-symbol series.",
        registry=reg,
    ).set(cap)
    Gauge(
        "harvest_build_info", "harvest-async version (value is 1).", ["version"], registry=reg
    ).labels(__version__).set(1)
