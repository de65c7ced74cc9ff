"""The live service end to end against a real server (each test runs once per flavour).

`service.serve` runs in-process inside a task group the test cancels; the tests write
input hashes like the producers and watch the proposal hashes and the audit stream. Waits
poll every few milliseconds up to a deadline; no test sleeps for the floor or heartbeat
defaults (they are set to fractions of a second).
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import redis.asyncio as aioredis

from harvest_async.core.models import Theta
from harvest_async.core.ports import NullHooks, PublishOut, RetractOut
from harvest_async.core.proposal import PROPOSAL_FIELDS, theta_id_for
from tests.support.live import (
    KEYS,
    SYM,
    audit,
    make_settings,
    market,
    now,
    passes_above,
    position,
    proposal,
    publishes,
    put,
    put_inputs,
    retracts,
    risk,
    running,
    wait_absent,
    wait_for,
    wait_published,
)


class Recorder(NullHooks):
    """Observer: what the engine published/retracted/flagged."""

    def __init__(self) -> None:
        self.published: list[PublishOut] = []
        self.retracted: list[RetractOut] = []
        self.invalid: list[tuple[str, str]] = []

    def on_publish(self, out: PublishOut) -> None:
        self.published.append(out)

    def on_retract(self, out: RetractOut) -> None:
        self.retracted.append(out)

    def on_invalid(self, symbol: str, reason: str) -> None:
        self.invalid.append((symbol, reason))


# -- tests -------------------------------------------------------------------------------


async def test_live_change_is_published_within_100ms(
    redis_url: str, client: aioredis.Redis
) -> None:
    await put_inputs(client, pnl=0.0)
    async with running(make_settings(redis_url)):
        first = await wait_published(client)
        assert first["trigger"] == "startup"
        assert first["harvest_action"] == "NONE"
        latencies = []
        for i, pnl in enumerate([5.0, 9.0, 13.0, 0.0, 5.0, 9.0]):
            sent = time.perf_counter()
            await put(client, KEYS.position(SYM), position(pnl))
            fields = await wait_published(
                client,
                lambda f, pnl=pnl: f["position_unrealized_pnl"] == repr(pnl),
                f"change {i}",
            )
            latencies.append(time.perf_counter() - sent)
            assert fields["trigger"] == "change"
        assert fields["harvest_action"] == "PARTIAL_50"
    latencies.sort()
    assert latencies[len(latencies) // 2] < 0.1, latencies
    assert latencies[-1] < 0.5, latencies
    entries = publishes(await audit(client))
    assert [e["harvest_action"] for e in entries] == [
        "NONE",
        "PARTIAL_25",
        "PARTIAL_50",
        "PARTIAL_75",
        "NONE",
        "PARTIAL_25",
        "PARTIAL_50",
    ]
    seqs = [int(e["seq"]) for e in entries]
    assert seqs == sorted(set(seqs))


async def test_floor_trailing_edge_publishes_the_latest_state_once(
    redis_url: str, client: aioredis.Redis
) -> None:
    """The floor's wiring (PUBLISH_INTERVAL_SEC, the wall clock, the timer): changes inside
    the window are published once, at its end, with the latest state. The rule in full
    (nothing before the end, nothing after it, a reverted change publishes nothing) is
    pinned on the fake clock in tests/component/test_runner.py."""
    await put_inputs(client, pnl=0.0)
    async with running(make_settings(redis_url, PUBLISH_INTERVAL_SEC="0.5")):
        first = await wait_published(client)
        t0 = float(first["ts_epoch"])
        await put(client, KEYS.position(SYM), position(5.0))  # material, inside the window
        await put(client, KEYS.position(SYM), position(13.0))  # the latest state
        last = await wait_published(
            client, lambda f: f["seq"] != first["seq"], "the trailing edge", limit=2.0
        )
        entries = publishes(await audit(client))
    assert last["harvest_action"] == "PARTIAL_75"
    assert last["position_unrealized_pnl"] == "13.0"
    assert last["trigger"] == "change"
    assert 0.5 <= float(last["ts_epoch"]) - t0 < 0.7
    assert len(entries) == 2  # nothing inside the window


async def test_heartbeat_republishes_with_the_same_plan_id(
    redis_url: str, client: aioredis.Redis
) -> None:
    await put_inputs(client, pnl=5.0)
    async with running(make_settings(redis_url, MAX_PUBLISH_AGE_SEC="1")):
        first = await wait_published(client)
        beat = await wait_published(
            client, lambda f: f["trigger"] == "heartbeat", "a heartbeat", limit=2.5
        )
        # a heartbeat recompute uses the age at that moment
        assert float(beat["position_age_sec"]) > float(first["position_age_sec"])
    assert beat["plan_id"] == first["plan_id"]
    assert int(beat["seq"]) > int(first["seq"])
    assert 1.0 <= float(beat["ts_epoch"]) - float(first["ts_epoch"]) < 1.6
    assert beat["harvest_action"] == first["harvest_action"] == "PARTIAL_25"


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("flat", {"side": "FLAT", "quantity": "0"}),
        ("zero_quantity", {"quantity": "0"}),
        ("no_position", None),
    ],
)
async def test_no_position_retracts_at_once_despite_the_floor(
    redis_url: str, client: aioredis.Redis, name: str, change: dict[str, str] | None
) -> None:
    await put_inputs(client, pnl=5.0)
    async with running(make_settings(redis_url, PUBLISH_INTERVAL_SEC="10")):
        await wait_published(client)
        sent = time.perf_counter()
        if change is None:
            await client.delete(KEYS.position(SYM))
        else:
            await put(client, KEYS.position(SYM), position(5.0, **change))
        await wait_absent(client)
        elapsed = time.perf_counter() - sent
        entries = retracts(await audit(client))
    assert elapsed < 5.0  # far inside the 10 s floor that would hold back a publish
    assert len(entries) == 1
    assert entries[0]["reason"].startswith(name)
    assert {"event", "symbol", "reason", "seq", "ts_epoch"} <= set(entries[0])


A_DAY_AHEAD = str(int(now()) + 86400)
BAD_INPUTS = [
    # (which hash, field changes, expected reason, field named in the reason)
    ("marketstate", {"sigma": None}, "invalid_marketstate", "sigma"),
    ("marketstate", {"ts": "abc"}, "invalid_marketstate", "ts"),
    ("marketstate", {"p_trend": "nan"}, "invalid_marketstate", "p_trend"),
    ("marketstate", {"sigma": "inf"}, "invalid_marketstate", "sigma"),
    ("marketstate", {"p_mr": "1.5"}, "invalid_marketstate", "p_mr"),
    ("marketstate", {"p_chop": "-0.1"}, "invalid_marketstate", "p_chop"),
    ("marketstate", {"sigma": "-0.01"}, "invalid_marketstate", "sigma"),
    ("marketstate", {"ts": "-1.0"}, "invalid_marketstate", "ts"),
    ("marketstate", {"ts_timestamp": A_DAY_AHEAD}, "invalid_marketstate", "ts_timestamp"),
    ("position", {"ts_epoch": A_DAY_AHEAD}, "invalid_position", "ts_epoch"),
    ("position", {"created_at": A_DAY_AHEAD}, "invalid_position", "created_at"),
    ("position", {"entry_price": "0"}, "invalid_position", "entry_price"),
    ("position", {"entry_price": "-5"}, "invalid_position", "entry_price"),
    ("position", {"side": "BUY"}, "invalid_position", "side"),
    ("position", {"unrealized_pnl": None}, "invalid_position", "unrealized_pnl"),
    ("position", {"created_at": "yesterday"}, "invalid_position", "created_at"),
    ("risk", {"stop_dist_pct": "wide"}, "invalid_risk", "stop_dist_pct"),
]


async def test_invalid_inputs_retract_with_a_reason_and_recover(
    redis_url: str, client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="harvest_async")
    recorder = Recorder()
    await put_inputs(client, pnl=5.0)
    async with running(make_settings(redis_url), observer=recorder):
        await wait_published(client)
        for kind, change, reason, field in BAD_INPUTS:
            good = {"marketstate": market(), "position": position(5.0), "risk": risk()}[kind]
            bad = {k: v for k, v in {**good, **change}.items() if v is not None}
            key = {"marketstate": KEYS.marketstate, "position": KEYS.position, "risk": KEYS.risk}[
                kind
            ](SYM)
            caplog.clear()
            await put(client, key, bad)
            await wait_absent(client)
            await put(client, key, {**bad, "mu": "0.2"})  # another event, same bad state
            await anyio.sleep(0.05)
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1, (change, [r.getMessage() for r in warnings])
            assert reason in warnings[0].getMessage()
            last = retracts(await audit(client))[-1]
            assert last["reason"].startswith(f"{reason}: {field}"), (change, last)
            await put(client, key, good)
            await wait_published(client, what=f"recovery from {change}")
        entries = await audit(client)
    assert [r for _s, r in recorder.invalid] == [r for _k, _c, r, _f in BAD_INPUTS]
    assert len(retracts(entries)) == len(BAD_INPUTS)
    # every publish came from valid input: one at startup and one per recovery
    assert len(publishes(entries)) == 1 + len(BAD_INPUTS)


async def test_stale_inputs_retract_and_recover(redis_url: str, client: aioredis.Redis) -> None:
    def fresh_market() -> dict[str, str]:
        # to the millisecond: a whole-second stamp can be ~1 s old when written
        return market(ts_timestamp=repr(round(now(), 3)))

    async with running(make_settings(redis_url, MAX_INPUT_AGE_SEC="1")):
        await put_inputs(client, pnl=5.0, mkt=fresh_market())
        await wait_published(client)
        # market state written long ago
        await put(client, KEYS.marketstate(SYM), market(ts_timestamp=str(int(now() - 60))))
        await wait_absent(client)
        await put(client, KEYS.marketstate(SYM), fresh_market())
        await wait_published(client, what="recovery from a stale market state")
        # position snapshot written long ago
        await put(client, KEYS.position(SYM), position(5.0, ts_epoch=repr(now() - 60)))
        await wait_absent(client)
        await put_inputs(client, pnl=5.0, mkt=fresh_market())
        recovered = await wait_published(client, what="recovery from a stale position")
        # no new writes: the inputs age past the limit by themselves
        await wait_absent(client, limit=2.5)
        aged_at = now()
        entries = retracts(await audit(client))
    assert [e["reason"].split(":")[0] for e in entries] == [
        "stale_marketstate",
        "stale_position",
        "stale_marketstate",
    ] or [e["reason"].split(":")[0] for e in entries] == [
        "stale_marketstate",
        "stale_position",
        "stale_position",
    ]
    assert aged_at - float(recovered["ts_epoch"]) < 2.0


async def test_future_dated_inputs_are_retracted_until_within_the_clock_skew(
    redis_url: str, client: aioredis.Redis
) -> None:
    await put_inputs(client, pnl=5.0)
    async with running(make_settings(redis_url, MAX_CLOCK_SKEW_SEC="3")):
        await wait_published(client)
        # a day ahead: invalid input, the proposal retracted with a reason naming the field
        await put(client, KEYS.marketstate(SYM), market(ts_timestamp=repr(now() + 86400)))
        await wait_absent(client)
        reason = retracts(await audit(client))[-1]["reason"]
        # within the tolerance: published, every age 0 (never negative); the position
        # first, so that nothing is published before both are written
        ahead = repr(round(now() + 2.0, 3))
        await put(client, KEYS.position(SYM), position(5.0, ts_epoch=ahead, created_at=ahead))
        await put(client, KEYS.marketstate(SYM), market(ts_timestamp=ahead))
        within = await wait_published(client, what="a proposal from inputs 2 s ahead")
        # 4.5 s ahead: retracted, then published with no new input once within 3 s
        stamp = now() + 4.5
        await put(client, KEYS.marketstate(SYM), market(ts_timestamp=repr(stamp)))
        await wait_absent(client)
        back = await wait_published(client, what="the proposal back by itself", limit=5.0)
    match = re.fullmatch(
        r"invalid_marketstate: ts_timestamp is (\d+) s in the future "
        r"\(more than MAX_CLOCK_SKEW_SEC=3\)",
        reason,
    )
    assert match and 86390 <= int(match[1]) <= 86400, reason
    assert within["marketstate_age_sec"] == "0.0"
    assert within["position_snapshot_age_sec"] == "0.0"
    assert within["position_age_sec"] == "0.0"
    assert float(back["ts_epoch"]) >= stamp - 3.0
    assert back["marketstate_age_sec"] == "0.0"


async def test_foreign_fields_are_gone_after_a_publish(
    redis_url: str, client: aioredis.Redis
) -> None:
    await put_inputs(client, pnl=0.0)
    # left behind by the original publisher (or anyone): must not survive our publish
    await client.hset(KEYS.proposal(SYM), mapping={"legacy": "1", "harvest_action": "NONE"})
    async with running(make_settings(redis_url)):
        fields = await wait_published(client, lambda f: "plan_id" in f)
        assert "legacy" not in fields
        await client.hset(KEYS.proposal(SYM), "sneaky", "x")
        await put(client, KEYS.position(SYM), position(9.0))
        fields = await wait_published(client, lambda f: f["harvest_action"] == "PARTIAL_50")
    assert set(fields) == set(PROPOSAL_FIELDS)


async def test_each_publish_and_its_audit_entry_land_together(
    redis_url: str, client: aioredis.Redis
) -> None:
    await put_inputs(client, pnl=0.0)
    mismatches: list[str] = []
    checks = 0

    async def checker() -> None:
        nonlocal checks
        while True:
            async with client.pipeline(transaction=True) as pipe:
                pipe.hgetall(KEYS.proposal(SYM))
                pipe.xrevrange(KEYS.stream, count=1)
                fields, last = await pipe.execute()
            checks += 1
            if last:
                entry = last[0][1]
                if entry["event"] == "publish" and {**fields, "event": "publish"} != entry:
                    mismatches.append(f"hash {fields} vs entry {entry}")
                if entry["event"] == "retract" and fields:
                    mismatches.append(f"retract entry but hash {fields}")
            elif fields:
                mismatches.append("hash without entry")
            await anyio.lowlevel.checkpoint()

    async with running(make_settings(redis_url)):
        await wait_published(client)
        async with anyio.create_task_group() as tg:
            tg.start_soon(checker)
            for i in range(60):
                if i % 15 == 14:
                    await client.delete(KEYS.position(SYM))
                    # a position re-created within a few ms may never be seen absent (a
                    # notification only says "look again"): let each deletion be seen
                    await wait_absent(client)
                else:
                    await put(client, KEYS.position(SYM), position((i % 4) * 4.5))
                await anyio.sleep(0.004)
            await anyio.sleep(0.1)
            tg.cancel_scope.cancel()
        entries = await audit(client)
    assert not mismatches, mismatches[:3]
    assert checks > 50
    assert len(retracts(entries)) == 4
    assert len(publishes(entries)) > 20
    seqs = [int(e["seq"]) for e in entries]
    assert seqs == sorted(set(seqs))  # strictly increasing across publishes and retracts


async def test_audit_stream_is_trimmed_to_about_maxlen(
    redis_url: str, redis_server: Any, client: aioredis.Redis
) -> None:
    # small stream nodes so that the approximate trim can act at this size
    before = redis_server.command("CONFIG", "GET", "stream-node-max-entries")[1]
    redis_server.command("CONFIG", "SET", "stream-node-max-entries", "5")
    try:
        await put_inputs(client, pnl=0.0)
        async with running(make_settings(redis_url, STREAM_MAXLEN="20")):
            await wait_published(client)
            for i in range(80):
                await put(client, KEYS.position(SYM), position((i % 2) * 5.0 + i * 1e-6))
                await wait_published(
                    client,
                    lambda f, i=i: f["position_unrealized_pnl"] == repr((i % 2) * 5.0 + i * 1e-6),
                )
            length = await client.xlen(KEYS.stream)
    finally:
        redis_server.command("CONFIG", "SET", "stream-node-max-entries", before)
    assert 20 <= length <= 30


async def test_stream_disabled_writes_no_audit_entries(
    redis_url: str, client: aioredis.Redis
) -> None:
    await put_inputs(client, pnl=0.0)
    async with running(make_settings(redis_url, ENABLE_STREAM="false")):
        await wait_published(client)
        await put(client, KEYS.position(SYM), position(9.0))
        await wait_published(client, lambda f: f["harvest_action"] == "PARTIAL_50")
        await client.delete(KEYS.position(SYM))
        await wait_absent(client)
    assert not await client.exists(KEYS.stream)


async def test_symbols_star_discovers_symbols_including_later_ones(
    redis_url: str, client: aioredis.Redis
) -> None:
    await put_inputs(client, "BTCUSDT", pnl=0.0)
    await put_inputs(client, "ETHUSDT", pnl=5.0)
    await put(client, KEYS.marketstate("NOPOSUSDT"), market())  # no position: no proposal
    async with running(make_settings(redis_url, SYMBOLS="*")) as runner:
        await wait_published(client, symbol="BTCUSDT")
        await wait_published(client, symbol="ETHUSDT")
        # a symbol that shows up later, market state first and position last
        await put(client, KEYS.marketstate("SOLUSDT"), market())
        await put(client, KEYS.risk("SOLUSDT"), risk())
        await anyio.sleep(0.05)
        assert not await client.exists(KEYS.proposal("SOLUSDT"))
        await put(client, KEYS.position("SOLUSDT"), {**position(13.0), "symbol": "SOLUSDT"})
        sol = await wait_published(client, symbol="SOLUSDT")
        # and one that goes away again is retracted and forgotten
        await client.delete(KEYS.position("ETHUSDT"))
        await wait_absent(client, "ETHUSDT")
        assert not await client.exists(KEYS.proposal("NOPOSUSDT"))
        assert "NOPOSUSDT" not in runner.engine.symbols()
    assert sol["harvest_action"] == "PARTIAL_75"
    assert sol["trigger"] == "change"


async def test_symbols_churning_through_reconciles_are_each_published_at_once(
    redis_url: str, client: aioredis.Redis
) -> None:
    """New positions keep appearing (50/s, each closed 2 s later) while a full reconcile
    runs every second. Other keys in the database make its SCAN take many round trips,
    a wide window for a position to appear behind the cursor: each new symbol must still
    be published within the normal latency, none a reconcile later (or never)."""
    rate, lifetime, duration = 50.0, 2.0, 10.0
    async with client.pipeline(transaction=False) as pipe:
        for batch in range(50):
            pipe.mset({f"other:{batch}:{i}": "x" for i in range(1000)})
        await pipe.execute()
    created: dict[str, float] = {}

    async def churn() -> None:
        start = time.perf_counter()
        open_: list[tuple[float, str]] = []
        for i in range(int(rate * duration)):
            await anyio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            symbol = f"C{i:04d}USDT"
            await put_inputs(client, symbol, pnl=5.0)
            created[symbol] = now()
            open_.append((time.perf_counter() + lifetime, symbol))
            while open_ and open_[0][0] <= time.perf_counter():
                await client.delete(KEYS.position(open_.pop(0)[1]))

    async with running(make_settings(redis_url, SYMBOLS="*", MAX_PUBLISH_AGE_SEC="1")) as runner:
        passes = runner.passes
        await churn()
        reconciles = runner.passes - passes
        ended = runner.passes
        await wait_for(passes_above(runner, ended), "one more reconcile", limit=5.0)
        entries = await client.xrange(KEYS.stream)
    first_publish: dict[str, float] = {}
    for entry_id, fields in entries:
        if fields["event"] == "publish":
            first_publish.setdefault(fields["symbol"], int(entry_id.split("-")[0]) / 1000)
    assert reconciles >= duration / 2  # reconciles did run all along
    missed = sorted(set(created) - set(first_publish))
    assert not missed, missed[:10]
    delays = sorted((first_publish[s] - t, s) for s, t in created.items())
    late = [(round(d, 3), s) for d, s in delays if d > 0.5]
    assert not late, late[-10:]


async def test_theta_from_env_and_file_is_used(
    redis_url: str, client: aioredis.Redis, tmp_path: Path
) -> None:
    await put_inputs(client, pnl=0.0)  # K = 0.5: NONE by default, FULL_CLOSE at 0.4
    default_id = theta_id_for(Theta())
    async with running(make_settings(redis_url)):
        base = await wait_published(client)
    assert base["harvest_action"] == "NONE"
    assert base["theta_id"] == default_id
    await client.delete(KEYS.proposal(SYM))

    async with running(make_settings(redis_url, THETA_KILL_THRESHOLD="0.4")):
        by_env = await wait_published(client)
    await client.delete(KEYS.proposal(SYM))
    theta_file = tmp_path / "theta.json"
    theta_file.write_text(json.dumps({"kill_threshold": 0.4}))
    async with running(make_settings(redis_url, THETA_FILE=str(theta_file))):
        by_file = await wait_published(client)
    for fields in (by_env, by_file):
        assert fields["harvest_action"] == "FULL_CLOSE_PROPOSED"
        assert "kill_score_triggered" in fields["reason_codes"]
        assert fields["theta_id"] != default_id
    assert by_env["theta_id"] == by_file["theta_id"]
    assert by_env["plan_id"] != base["plan_id"]


async def test_synthetic_positions_only_when_asked(redis_url: str, client: aioredis.Redis) -> None:
    await put(client, KEYS.marketstate(SYM), market())
    async with running(make_settings(redis_url, POSITION_SOURCE="auto")) as runner:
        await anyio.sleep(0.2)
        assert runner.passes >= 1
        assert not await client.exists(KEYS.proposal(SYM))  # auto never synthesises
    async with running(make_settings(redis_url, POSITION_SOURCE="synthetic")):
        fields = await wait_published(client)
    assert fields["position_source"] == "synthetic"
    assert fields["position_side"] == "LONG"
    await put(client, KEYS.position(SYM), position(5.0))
    await client.delete(KEYS.proposal(SYM))
    async with running(make_settings(redis_url, POSITION_SOURCE="redis_hash")):
        fields = await wait_published(client)
    assert fields["position_source"] == "redis_hash"


async def test_restart_adopts_a_fresh_identical_proposal(
    redis_url: str, client: aioredis.Redis
) -> None:
    await put_inputs(client, pnl=5.0)
    await put_inputs(client, "ETHUSDT", pnl=9.0)
    settings = make_settings(redis_url, SYMBOLS="BTCUSDT,ETHUSDT", PUBLISH_INTERVAL_SEC="10")
    async with running(settings):
        before = await wait_published(client)
        await wait_published(client, symbol="ETHUSDT")
    # ETHUSDT's decision changes while no publisher runs; BTCUSDT's does not
    await put(client, KEYS.position("ETHUSDT"), {**position(13.0), "symbol": "ETHUSDT"})
    length = await client.xlen(KEYS.stream)
    async with running(settings) as runner:
        assert runner.passes >= 1
        eth = await wait_published(
            client, lambda f: f["harvest_action"] == "PARTIAL_75", symbol="ETHUSDT"
        )
        after = await proposal(client)
    assert after == before  # adopted, not re-published
    assert eth["trigger"] == "startup"
    assert await client.xlen(KEYS.stream) == length + 1  # only ETHUSDT's publish


async def test_startup_replaces_a_proposal_it_cannot_adopt(
    redis_url: str, client: aioredis.Redis
) -> None:
    await put_inputs(client, pnl=5.0)
    async with running(make_settings(redis_url)):
        first = await wait_published(client)
    # too old to adopt (older than the heartbeat)
    await client.hset(KEYS.proposal(SYM), "ts_epoch", repr(now() - 120))
    async with running(make_settings(redis_url)):
        second = await wait_published(client, lambda f: f["seq"] != first["seq"])
    assert second["trigger"] == "startup"
    assert second["plan_id"] == first["plan_id"]  # the same decision keeps its id
    assert second["harvest_action"] == first["harvest_action"]
    assert int(second["seq"]) > int(first["seq"])
    assert len(publishes(await audit(client))) == 2
