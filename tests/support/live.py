"""The integration tier: helpers for tests against a real server (the conftest fixtures).

Inputs are written the way producers write them (a whole hash replaced atomically), the
service runs in-process (`running`: `service.app.serve` in a task group the test
cancels), and the waits poll every few milliseconds up to a deadline: no test sleeps for
a floor or a heartbeat.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import anyio
import pytest
import redis.asyncio as aioredis

from harvest_async.config import Settings, settings_from_env
from harvest_async.core.keys import Keys
from harvest_async.service.app import serve
from harvest_async.service.runner import Runner

T = TypeVar("T")
KEYS = Keys()
SYM = "BTCUSDT"


def now() -> float:
    return time.time()


# -- inputs ------------------------------------------------------------------------------


def market(**over: str | None) -> dict[str, str]:
    """A calm market: no regime flip, no sigma spike, no ts drop (K = 0.5); stamped now.
    `over` sets fields, None removes one. `mu` and `buffer_size` are fields the service
    does not read."""
    fields: dict[str, str | None] = {
        "sigma": "0.005",
        "ts": "0.5",
        "p_trend": "0.6",
        "p_mr": "0.2",
        "p_chop": "0.2",
        "ts_timestamp": str(int(now())),
        "mu": "0.0001",
        "buffer_size": "256",
    }
    fields.update(over)
    return {k: v for k, v in fields.items() if v is not None}


def position(pnl: float = 0.0, symbol: str | None = SYM, **over: str | None) -> dict[str, str]:
    """LONG 1 @ 100 opened and snapshotted now. With a 2 % stop (risk unit 2, cost 0.1)
    R = (pnl - 0.1) / 2: pnl 0 -> NONE, 5 -> PARTIAL_25 (+ profit lock), 9 -> PARTIAL_50,
    13 -> PARTIAL_75; with a 1 % stop pnl 5 -> PARTIAL_50. None in `over` (or `symbol`)
    leaves that field out.
    """
    fields: dict[str, str | None] = {
        "symbol": symbol,
        "side": "LONG",
        "quantity": "1.0",
        "entry_price": "100.0",
        "current_price": repr(100.0 + pnl),
        "unrealized_pnl": repr(float(pnl)),
        "created_at": str(int(now())),
        "ts_epoch": repr(round(now(), 3)),
    }
    fields.update(over)
    return {k: v for k, v in fields.items() if v is not None}


def risk(stop: str = "0.02") -> dict[str, str]:
    return {"stop_dist_pct": stop}


async def put(client: aioredis.Redis, key: str, fields: dict[str, str]) -> None:
    """Replace the whole hash atomically (what a producer's rewrite looks like)."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        await pipe.execute()


async def put_inputs(
    client: aioredis.Redis,
    symbol: str = SYM,
    *,
    pnl: float = 0.0,
    stop: str = "0.02",
    mkt: dict[str, str] | None = None,
    pos: dict[str, str] | None = None,
    keys: Keys = KEYS,
) -> dict[str, str]:
    """Write `symbol`'s three input hashes (market state, risk, position last); return the
    market state written."""
    written = mkt if mkt is not None else market()
    await put(client, keys.marketstate(symbol), written)
    await put(client, keys.risk(symbol), risk(stop))
    fields = pos if pos is not None else position(pnl, symbol)
    await put(client, keys.position(symbol), {**fields, "symbol": symbol})
    return written


# -- reading what the service wrote ----------------------------------------------------------


async def proposal(client: aioredis.Redis, symbol: str = SYM, keys: Keys = KEYS) -> dict[str, str]:
    fields: dict[str, str] = await client.hgetall(keys.proposal(symbol))  # type: ignore[misc]
    return fields


async def proposals(client: aioredis.Redis, symbols: list[str]) -> dict[str, dict[str, str]]:
    """Several proposal hashes in one round trip."""
    async with client.pipeline(transaction=False) as pipe:
        for symbol in symbols:
            pipe.hgetall(KEYS.proposal(symbol))
        found = await pipe.execute()
    return dict(zip(symbols, found, strict=True))


async def absent(client: aioredis.Redis, symbol: str = SYM) -> bool:
    """No proposal for `symbol`."""
    return not await client.exists(KEYS.proposal(symbol))


async def shows_pnl(client: aioredis.Redis, pnl: float, symbol: str = SYM) -> bool:
    """`symbol`'s proposal was computed from a position with this unrealized PnL."""
    got = await client.hget(KEYS.proposal(symbol), "position_unrealized_pnl")
    return bool(got == repr(pnl))


async def audit(client: aioredis.Redis, stream: str = KEYS.stream) -> list[dict[str, str]]:
    """The audit stream's entries, oldest first."""
    entries: Any = await client.xrange(stream)
    return [fields for _id, fields in entries]


def publishes(entries: list[dict[str, str]], symbol: str = SYM) -> list[dict[str, str]]:
    return [e for e in entries if e["event"] == "publish" and e["symbol"] == symbol]


def retracts(entries: list[dict[str, str]], symbol: str = SYM) -> list[dict[str, str]]:
    return [e for e in entries if e["event"] == "retract" and e["symbol"] == symbol]


# -- waiting ---------------------------------------------------------------------------------


async def wait_for(
    probe: Callable[[], Awaitable[T]], what: str, limit: float = 5.0, every: float = 0.003
) -> T:
    """Poll `probe` every few ms until it returns something truthy, for at most `limit` s."""
    deadline = time.perf_counter() + limit
    while True:
        value = await probe()
        if value:
            return value
        if time.perf_counter() > deadline:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        await anyio.sleep(every)


async def wait_published(
    client: aioredis.Redis,
    check: Callable[[dict[str, str]], bool] = bool,
    what: str = "a proposal",
    *,
    symbol: str = SYM,
    limit: float = 3.0,
    keys: Keys = KEYS,
) -> dict[str, str]:
    """Until `symbol` has a proposal that passes `check`; returns it."""

    async def probe() -> dict[str, str]:
        fields = await proposal(client, symbol, keys)
        return fields if fields and check(fields) else {}

    return await wait_for(probe, f"{what} for {symbol}", limit)


async def wait_action(
    client: aioredis.Redis, action: str, symbol: str = SYM, limit: float = 3.0
) -> dict[str, str]:
    """Until `symbol`'s proposal says `action`; returns it."""
    return await wait_published(
        client, lambda f: f.get("harvest_action") == action, f"{action}", symbol=symbol, limit=limit
    )


async def wait_absent(client: aioredis.Redis, symbol: str = SYM, limit: float = 3.0) -> None:
    await wait_for(lambda: absent(client, symbol), f"{symbol}'s proposal to be retracted", limit)


def passes_above(runner: Runner, passes: int) -> Callable[[], Awaitable[bool]]:
    """A probe: the runner completed a full pass (resync, reconcile) since `passes`. It
    counts one once its writes are done, just after they show."""

    async def probe() -> bool:
        return runner.passes > passes

    return probe


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    """The log messages so far that contain `text`."""
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    """A probe for `wait_for`: a log message contains `text`."""
    return bool(messages(caplog, text))


# -- the service -------------------------------------------------------------------------


def service_env(url: str, **env: str | None) -> dict[str, str]:
    """The service's environment for the tests: one symbol, no floor, a 30 s heartbeat,
    a fast poll; `env` overrides (None: leave the variable unset)."""
    base: dict[str, str | None] = {
        "REDIS_URL": url,
        "SYMBOLS": SYM,
        "PUBLISH_INTERVAL_SEC": "0",
        "MAX_PUBLISH_AGE_SEC": "30",
        "INSTANCE": "it",
        "POLL_INTERVAL_SEC": "0.2",
    }
    base.update(env)
    return {k: v for k, v in base.items() if v is not None}


def make_settings(url: str, **env: str | None) -> Settings:
    return settings_from_env(service_env(url, **env))


@asynccontextmanager
async def running(settings: Settings, **kwargs: Any) -> AsyncIterator[Runner]:
    """The service in this event loop (ready: subscribed, startup pass written) until the
    block ends, then cancelled. `kwargs` go to `serve` (e.g. `observer`)."""
    box: dict[str, Runner] = {}
    ready = anyio.Event()

    async def on_ready(runner: Runner) -> None:
        box["runner"] = runner
        ready.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(serve, settings, on_ready=on_ready, handle_signals=False, **kwargs))
        with anyio.fail_after(10):
            await ready.wait()
        try:
            yield box["runner"]
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[aioredis.Redis]:
    """A client that decodes replies, closed after the block."""
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the test's server (`redis_url`) that decodes replies."""
    async with connected(redis_url) as c:
        yield c
