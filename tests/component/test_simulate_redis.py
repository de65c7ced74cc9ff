"""`run_simulator` writes what the simulator generates, the way the producers do
(fakeredis: fast, and keyspace semantics are not what is under test here)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import fakeredis
import pytest

from harvest_async.clock import SystemClock
from harvest_async.core.keys import Keys
from harvest_async.errors import RedisUnavailable
from harvest_async.tools.simulate import InputWrite, Simulator, run_simulator, symbols_for

KEYS = Keys(
    marketstate_prefix="s:ms:",
    risk_prefix="s:risk:",
    position_prefix="s:pos:",
    harvest_prefix="s:out:",
)


class Recording(Simulator):
    """Remembers every write it hands out, in order."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.log: list[InputWrite] = []

    def initial(self) -> list[InputWrite]:
        out = super().initial()
        self.log.extend(out)
        return out

    def advance(self, now: float, count: int) -> list[InputWrite]:
        out = super().advance(now, count)
        self.log.extend(out)
        return out


@pytest.fixture
async def client() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    c = fakeredis.FakeAsyncRedis(decode_responses=True)
    yield c
    await c.aclose()


def _key(w: InputWrite) -> str:
    return {"marketstate": KEYS.marketstate, "risk": KEYS.risk, "position": KEYS.position}[w.kind](
        w.symbol
    )


async def test_writes_whole_hashes_with_ttls_and_deletes(
    client: fakeredis.FakeAsyncRedis,
) -> None:
    clock = SystemClock()
    sim = Recording(symbols_for(8), seed=3, start=clock.now())
    batches: list[int] = []
    written = await run_simulator(
        client, KEYS, sim, rate=4000, duration=0.25, clock=clock, on_write=batches.append
    )
    assert written == len(sim.log) == sum(batches)
    assert len(sim.log) - sum(1 for w in sim.log if w.at == sim.start) >= 1000
    final: dict[str, InputWrite] = {}
    for w in sim.log:
        final[_key(w)] = w
    for key, w in final.items():
        fields = await client.hgetall(key)
        if w.op == "delete":
            assert fields == {}
            continue
        assert fields == w.fields, key  # the whole hash: fields a rewrite lacks are gone
        ttl = await client.ttl(key)
        expected = {"marketstate": 600, "position": 3600, "risk": None}[w.kind]
        if expected is None:
            assert ttl == -1
        else:
            assert 0 < ttl <= expected
    assert not await client.keys("quantum:*")  # the configured prefixes only


async def test_without_initial_snapshot_and_unbounded_duration_is_cancellable(
    client: fakeredis.FakeAsyncRedis,
) -> None:
    clock = SystemClock()
    sim = Recording(["BTCUSDT"], seed=1, start=clock.now())
    with anyio.move_on_after(0.1):
        await run_simulator(client, KEYS, sim, rate=500, duration=None, clock=clock, initial=False)
    assert 10 <= len(sim.log) <= 80
    assert all(w.at > sim.start for w in sim.log)


async def test_rate_must_be_positive(client: fakeredis.FakeAsyncRedis) -> None:
    sim = Simulator(["BTCUSDT"], seed=1, start=0.0)
    with pytest.raises(ValueError, match="rate"):
        await run_simulator(client, KEYS, sim, rate=0, duration=1, clock=SystemClock())


async def test_connection_errors_become_redis_unavailable() -> None:
    server = fakeredis.FakeServer()
    server.connected = False
    client = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
    try:
        sim = Simulator(["BTCUSDT"], seed=1, start=0.0)
        with pytest.raises(RedisUnavailable, match="simulator write"):
            await run_simulator(client, KEYS, sim, rate=10, duration=0.01, clock=SystemClock())
    finally:
        await client.aclose()
