"""`harvest-async demo`: scripted symbols + simulator + service + watch view.

`run_demo` runs four things in one task group on one event loop: the scripted symbols
(`scripted.run_script`: a ladder, a profit lock, a regime collapse, a close, bad input),
the simulator writing random input hashes for the others (`simulate.run_simulator`), the
real service (`service.serve`, with a 1 s floor and a 10 s heartbeat so that something
happens), and either the live `watch` view or, with a duration, nothing visible until the
summary. The caller (`cli/demo.py`) starts and removes the embedded server.

Against a server the user gave (REDIS_URL) every key gets the `harvest-demo:` prefix, so the
demo never touches real inputs or proposals, and those keys are deleted at the end.
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

import anyio

from harvest_async.clock import Clock, SystemClock, monotonic
from harvest_async.config import Settings, settings_from_env
from harvest_async.core.ports import NullHooks, PublishOut, RetractOut
from harvest_async.core.timefmt import clock_utc
from harvest_async.redis_io.client import REDIS_ERRORS, Client, client_for, describe_url
from harvest_async.service.app import serve
from harvest_async.service.metrics import reason_label
from harvest_async.service.runner import Runner
from harvest_async.signals import cancel_on_signal
from harvest_async.tools.scripted import SCRIPTED, STORIES, ScriptedSymbols, run_script
from harvest_async.tools.simulate import Simulator, run_simulator, symbols_for
from harvest_async.tools.watch import Terminal, Watcher, live, render

__all__ = ["DEMO_PREFIX", "DemoTally", "demo_settings", "run_demo"]

DEMO_PREFIX = "harvest-demo:"


def demo_settings(
    redis_url: str,
    symbols: Sequence[str],
    *,
    password_file: str | None = None,
    namespaced: bool = False,
    log_level: str = "WARNING",
) -> Settings:
    """The service's settings for the demo: a short floor and heartbeat."""
    env = {
        "REDIS_URL": redis_url,
        "SYMBOLS": ",".join(symbols),
        "PUBLISH_INTERVAL_SEC": "1",
        "MAX_PUBLISH_AGE_SEC": "10",
        "INSTANCE": "demo",
        "LOG_LEVEL": log_level,
        "LIVENESS_TTL_SEC": "10",
    }
    if password_file:
        env["REDIS_PASSWORD_FILE"] = password_file
    if namespaced:
        env.update(
            {
                "MARKETSTATE_PREFIX": DEMO_PREFIX + "quantum:marketstate:",
                "RISKPROPOSAL_PREFIX": DEMO_PREFIX + "quantum:risk:proposal:",
                "POSITION_PREFIX": DEMO_PREFIX + "quantum:state:positions:",
                "HARVEST_PREFIX": DEMO_PREFIX + "quantum:harvest:proposal:",
                "STREAM_NAME": DEMO_PREFIX + "quantum:stream:harvest.proposal",
                "LIVENESS_PREFIX": DEMO_PREFIX + "quantum:harvest:publisher:",
            }
        )
    return settings_from_env(env)


@dataclass
class DemoTally(NullHooks):
    """An engine Observer that remembers what was published (for the summary)."""

    publishes: Counter[str] = field(default_factory=Counter)  # by trigger
    actions: Counter[str] = field(default_factory=Counter)
    retractions: Counter[str] = field(default_factory=Counter)  # by reason label
    per_symbol: dict[str, list[str]] = field(default_factory=dict)  # actions in order
    retracted: Counter[str] = field(default_factory=Counter)  # by symbol
    published: Counter[str] = field(default_factory=Counter)  # by symbol

    def on_publish(self, out: PublishOut) -> None:
        action = out.decision.harvest_action
        self.publishes[out.trigger] += 1
        self.actions[action] += 1
        self.published[out.symbol] += 1
        seen = self.per_symbol.setdefault(out.symbol, [])
        shown = action if out.decision.new_sl_proposed is None else f"{action}+SL"
        if not seen or seen[-1] != shown:
            seen.append(shown)

    def on_retract(self, out: RetractOut) -> None:
        self.retractions[reason_label(out.reason)] += 1
        self.retracted[out.symbol] += 1
        seen = self.per_symbol.setdefault(out.symbol, [])
        if not seen or seen[-1] != "RETRACTED":
            seen.append("RETRACTED")

    @property
    def total_publishes(self) -> int:
        return sum(self.publishes.values())


@dataclass
class DemoResult:
    recorder: DemoTally
    writes: int
    seconds: float
    final_table: list[str]
    events: list[str]


@dataclass
class _Demo:
    """What the demo's concurrent tasks share: the one client, the counts behind the
    progress lines and the summary, and the two gates that hold the service back until
    every symbol has a full set of inputs (else it would start by retracting them)."""

    settings: Settings
    clock: Clock
    scripted: list[str]
    random_symbols: list[str]
    progress: Callable[[str], None] | None
    recorder: DemoTally
    started: float
    client: Client
    watcher: Watcher
    snapshot_written: anyio.Event = field(default_factory=anyio.Event)
    script_written: anyio.Event = field(default_factory=anyio.Event)
    written: int = 0

    @classmethod
    def open(
        cls,
        settings: Settings,
        symbols: list[str],
        clock: Clock,
        progress: Callable[[str], None] | None,
    ) -> _Demo:
        recorder = DemoTally()
        started = monotonic()
        client = client_for(settings.redis_url, settings.redis_password, name="harvest-demo")
        watcher = Watcher(
            client,
            settings.keys,
            symbols=symbols,
            clock=clock,
            kill_threshold=settings.theta.kill_threshold,
            url=settings.redis_url,
            password=settings.redis_password,
        )
        demo = cls(
            settings=settings,
            clock=clock,
            scripted=[s for s in symbols if s in SCRIPTED],
            random_symbols=[s for s in symbols if s not in SCRIPTED],
            progress=progress,
            recorder=recorder,
            started=started,
            client=client,
            watcher=watcher,
        )
        # a writer that will not run must not hold the service back
        if not demo.random_symbols:
            demo.snapshot_written.set()
        if not demo.scripted:
            demo.script_written.set()
        return demo

    def count(self, n: int) -> None:
        self.written += n
        self.snapshot_written.set()

    def stepped(self, _step: int) -> None:
        self.written += 3 * len(self.scripted)  # market, risk, position per symbol
        self.script_written.set()

    async def script(self, step_sec: float) -> None:
        await run_script(
            self.client,
            self.settings.keys,
            ScriptedSymbols(start=self.clock.now(), symbols=self.scripted),
            clock=self.clock,
            step_sec=step_sec,
            on_step=self.stepped,
        )

    async def simulator(self, seed: int, rate: float) -> None:
        sim = Simulator(self.random_symbols, seed=seed, start=self.clock.now())
        await run_simulator(
            self.client,
            self.settings.keys,
            sim,
            rate=rate,
            duration=None,
            clock=self.clock,
            on_write=self.count,
        )

    async def service(self) -> None:
        await self.snapshot_written.wait()  # start on a full set of inputs
        await self.script_written.wait()

        async def ready(_runner: Runner) -> None:
            if self.progress is not None:
                self.progress("service ready")

        await serve(self.settings, observer=self.recorder, handle_signals=False, on_ready=ready)

    async def view(self, scope: anyio.CancelScope, out: TextIO, color: bool, title: str) -> None:
        footer = "q or Ctrl-C stops the demo and removes what it created"
        with Terminal(out) as terminal:
            await live(
                self.watcher,
                terminal,
                color=color,
                title=title,
                handle_signals=False,
                footer=footer,
            )
        scope.cancel()  # `q` ends the live view: end the demo too

    async def ticker(self) -> None:
        """Progress lines for a demo without a live view and without an end."""
        while True:
            await anyio.sleep(5.0)
            if self.progress is not None:
                self.progress(
                    f"{monotonic() - self.started:.0f} s: {self.written} input writes, "
                    f"{self.recorder.total_publishes} publishes, "
                    f"{sum(self.recorder.retractions.values())} retractions"
                )

    async def final_view(self, *, color: bool, title: str) -> tuple[list[str], list[str]]:
        """The proposals table and the change log for the summary: the last load is shielded
        (an outer cancellation must not lose the summary) and bounded (a lost server must
        not hang the exit)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await self.watcher.load()
        table = render(
            self.watcher.model,
            self.clock.now(),
            width=160,
            color=color,
            title=title,
            live=False,
        )
        events = [f"{clock_utc(at)}  {text}" for at, _kind, text in list(self.watcher.model.events)]
        return table, events


async def _cancel_after(scope: anyio.CancelScope, seconds: float) -> None:
    await anyio.sleep(seconds)
    scope.cancel()


async def _close_quietly(client: Client) -> None:
    """Close even while cancelled, and never let a lost server mask the real outcome."""
    with anyio.CancelScope(shield=True):
        with contextlib.suppress(*REDIS_ERRORS):
            await client.aclose()


async def run_demo(
    settings: Settings,
    *,
    duration: float | None,
    rate: float = 6.0,
    step_sec: float = 2.5,
    seed: int = 1,
    interactive: bool = True,
    out: TextIO = sys.stdout,
    color: bool = False,
    title: str = "",
    clock: Clock | None = None,
    progress: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the scripted symbols + simulator + service (+ the live view when `interactive`)
    until `duration` has passed, or until SIGINT/SIGTERM (or `q` in the live view). The
    settings' SYMBOLS are the scripted ones followed by the random ones."""
    clock = clock or SystemClock()
    symbols = list(settings.symbols or [*SCRIPTED, *symbols_for(6)])
    demo = _Demo.open(settings, symbols, clock, progress)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_on_signal, tg.cancel_scope)
            if demo.scripted:
                tg.start_soon(demo.script, step_sec)
            if demo.random_symbols:
                tg.start_soon(demo.simulator, seed, rate)
            tg.start_soon(demo.service)
            if interactive:
                tg.start_soon(demo.view, tg.cancel_scope, out, color, title)
            else:
                tg.start_soon(demo.watcher.run)  # collects the change log for the summary
                if duration is None:
                    tg.start_soon(demo.ticker)
            if duration is not None:
                tg.start_soon(_cancel_after, tg.cancel_scope, duration)
        seconds = monotonic() - demo.started
        table, events = await demo.final_view(color=color, title=title)
        return DemoResult(demo.recorder, demo.written, seconds, table, events)
    finally:
        await _close_quietly(demo.client)


async def delete_namespace(url: str, password: str | None, prefix: str = DEMO_PREFIX) -> int:
    """Remove every key the demo created on a server it did not start."""
    client: Client = client_for(url, password, name="harvest-demo-cleanup")
    deleted = 0
    try:
        pattern = prefix + "*"
        batch: list[str] = []
        async for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(await client.delete(*batch))
                batch = []
        if batch:
            deleted += int(await client.delete(*batch))
    finally:
        await _close_quietly(client)
    return deleted


def summary(
    result: DemoResult,
    *,
    symbols: Sequence[str],
    where: str,
) -> list[str]:
    rec = result.recorder
    lines = [
        f"harvest-async demo: {len(symbols)} symbols, {where}, ran {result.seconds:.1f} s",
        f"inputs: {result.writes} hash writes; service: {rec.total_publishes} publishes ("
        + ", ".join(f"{k} {v}" for k, v in sorted(rec.publishes.items()))
        + f"), {sum(rec.retractions.values())} retractions",
    ]
    if rec.actions:
        lines.append(
            "actions published: " + ", ".join(f"{k} {v}" for k, v in sorted(rec.actions.items()))
        )
    if rec.retractions:
        lines.append(
            "retractions: " + ", ".join(f"{k} {v}" for k, v in sorted(rec.retractions.items()))
        )
    lines.append("")
    lines.append(
        "proposals seen per symbol (actions in the order they were published; +SL: with a "
        "stop move):"
    )
    lines.append(f"  {'SYMBOL':<12} {'PUBLISHES':>9} {'RETRACTS':>8}  ACTIONS")
    for sym in symbols:
        seen = rec.per_symbol.get(sym, [])
        lines.append(
            f"  {sym:<12} {rec.published[sym]:>9} {rec.retracted[sym]:>8}  "
            + (" > ".join(seen) if seen else "-")
        )
    scripted = [sym for sym in symbols if sym in STORIES]
    if scripted:
        lines.append("")
        lines.append("scripted symbols (the others are random):")
        lines.extend(f"  {sym:<12} {STORIES[sym]}" for sym in scripted)
    lines.append("")
    lines.append("final proposals in Redis:")
    lines.extend("  " + line for line in result.final_table[1:])
    if result.events:
        lines.append("")
        lines.append(f"last {min(len(result.events), 15)} changes seen by the watch view:")
        lines.extend("  " + text for text in result.events[-15:])
    return lines


def describe_server(url: str, embedded: str | None) -> str:
    return f"{embedded} at {describe_url(url)}" if embedded else f"Redis at {describe_url(url)}"
