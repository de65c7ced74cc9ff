"""The component tier: the live runner and the engine on in-memory fakes, virtual time.

`build()` wires the real `Engine` and `Runner` to the shipped fakes
(`harvest_async.testing`: `MemoryStore`, `MemorySink`, `ManualSource`, `FakeClock`);
`running()` starts the runner (its startup pass written) and stops it after the block.
Time moves only with `h.clock.advance`; the real-time waits here are safety timeouts for
in-memory work that takes a few event-loop turns.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.lowlevel

from harvest_async.backoff import Backoff
from harvest_async.core.engine import Engine, EngineConfig
from harvest_async.core.gate import GateConfig
from harvest_async.core.input_hashes import SymbolInputs
from harvest_async.core.keys import Keys
from harvest_async.service.runner import Runner
from harvest_async.testing import FakeClock, ManualSource, MemorySink, MemoryStore

T0 = 1_700_000_000.0
FLOOR = 10.0
HEARTBEAT = 60.0
ABC = ("A", "B", "C")

MS = {"sigma": "0.01", "ts": "0.35", "p_trend": "0.5", "p_mr": "0.2", "p_chop": "0.3"}
RISK = {"stop_dist_pct": "0.02"}
# entry 100, stop 2 %, cost 0.1: R = (pnl - 0.1) / 2
NONE_PNL = 1.0  # R 0.45: NONE, no SL
P25_PNL = 5.0  # R 2.45: PARTIAL_25 + profit lock
P50_PNL = 9.0  # R 4.45: PARTIAL_50
P75_PNL = 13.0  # R 6.45: PARTIAL_75


# -- inputs ------------------------------------------------------------------------------


def pos(pnl: float = NONE_PNL, **changes: str | None) -> dict[str, str]:
    """LONG 1 @ 100 (current price 101); `changes` set fields, None removes one."""
    out = {
        "side": "LONG",
        "entry_price": "100",
        "unrealized_pnl": repr(pnl),
        "current_price": "101",
        "quantity": "1",
    }
    for name, value in changes.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def inp(
    sym: str = "A",
    pnl: float = NONE_PNL,
    *,
    ms: dict[str, str] | None = MS,
    risk: dict[str, str] | None = RISK,
    position: dict[str, str] | bool | None = True,
    **changes: str | None,
) -> SymbolInputs:
    """A symbol's three input hashes; `position=False`: no position key."""
    p = pos(pnl, **changes) if position is True else position or None
    return SymbolInputs(sym, marketstate=ms, risk=risk, position=p)


def engine_for(**kwargs: object) -> Engine:
    """An engine with the test floor and heartbeat unless `gate` is given."""
    kwargs.setdefault("gate", GateConfig(floor_sec=FLOOR, heartbeat_sec=HEARTBEAT))
    return Engine(EngineConfig(**kwargs))  # type: ignore[arg-type]


# -- the runner on the fakes ---------------------------------------------------------------


@dataclass
class Harness:
    clock: FakeClock
    store: MemoryStore
    sink: MemorySink
    source: ManualSource
    engine: Engine
    runner: Runner


def build(
    symbols: tuple[str, ...] | None = ABC,
    *,
    reconcile_every: float = 3600.0,
    store: MemoryStore | None = None,
    keys: Keys | None = None,
) -> Harness:
    """A runner over `symbols` (None: SYMBOLS='*'), each with NONE inputs (or `store`'s),
    floor 10 s, heartbeat 60 s; refused writes retried after 1, 2, 4, 4 ... s. `keys`:
    gaps that name cluster slots are scoped (None: every gap resyncs every symbol)."""
    clock = FakeClock(T0)
    if store is None:
        store = MemoryStore(inp(sym) for sym in symbols or ("A",))
    sink = MemorySink(store)
    engine = engine_for(symbols=symbols)
    runner = Runner(
        engine,
        store,
        sink,
        clock,
        symbols=symbols,
        reconcile_every=reconcile_every,
        refusal_backoff=Backoff(first=1.0, cap=4.0, jitter=0.0),
        keys=keys,
    )
    return Harness(clock, store, sink, ManualSource(), engine, runner)


@asynccontextmanager
async def running(h: Harness) -> AsyncIterator[Harness]:
    """The runner started (its startup pass done) until the block ends."""
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(2):
            await tg.start(h.runner.run, h.source)
        try:
            yield h
        finally:
            tg.cancel_scope.cancel()


async def until(condition: Callable[[], bool], *, limit: float = 2.0) -> None:
    """Wait (real time, at most `limit` s) for in-memory work to reach `condition`."""
    with anyio.fail_after(limit):
        while not condition():
            await anyio.lowlevel.checkpoint()


async def settle(turns: int = 100) -> None:
    """Let the runner finish whatever in-memory work it has (no time passes)."""
    for _ in range(turns):
        await anyio.lowlevel.checkpoint()


async def idle(h: Harness, *, limit: float = 2.0) -> None:
    """Until the runner has handled every event and due timer so far (real-time bound)."""
    with anyio.fail_after(limit):
        await h.runner.wait_idle()


async def change(
    h: Harness, symbol: str, inputs: SymbolInputs, times: int = 1, kind: str = "position"
) -> None:
    """Write new inputs, notify, and wait until the runner has fetched and handled them."""
    before = len(h.store.fetches)
    h.store.set_inputs(inputs)
    h.source.changed(symbol, kind, times=times)
    await until(lambda: len(h.store.fetches) > before)
    await settle()
