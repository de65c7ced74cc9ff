"""Record and replay against a real server (each test runs once per server flavour).

The parity test: the live service (`service.serve`, in-process) runs against simulated
input while `record` captures the same input; the recording is replayed offline; per
symbol, the sequence of decisions (event, plan_id, action, trigger) the live service put
on its audit stream must equal the replay's.

What makes live and replay agree, and how the input is paced for it:

* The replay evaluates a change at the time the recorder read it; the live service at the
  time it read it: a few milliseconds apart. Every timing rule (floor, trailing edge,
  heartbeat) is a comparison of such times, so a change arriving within milliseconds of a
  floor window's end could fall on different sides of it. The simulator therefore writes
  in bursts (two atomic batches 50 ms apart at the start of each 1 s cycle) and the floor
  is 0.4 s: every trailing edge fires mid-cycle, ~0.35 s away from any input change.
* A batch is one MULTI/EXEC and both readers read a symbol's three hashes at once, so the
  service and the recorder never see half a batch; the recorder stamps what one read
  found with one time, and the replay evaluates it as one round, like the service.
* Kill scores depend on `now` (position age) by ~1e-9 between the two; plan_ids hash the
  kill score on the CHANGE_EPS grid, so they agree (a grid crossing in those 1e-9 is a
  one-in-a-million event).
* The heartbeat and reconcile (60 s) do not fire in the test's ~12 s.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import zlib
from functools import partial
from pathlib import Path

import anyio
import pytest

from harvest_async.clock import SystemClock
from harvest_async.config import Settings, engine_config
from harvest_async.core.ports import Output
from harvest_async.replay.format import Delete, End, Set, Snapshot
from harvest_async.replay.into_redis import replay_into
from harvest_async.replay.recorder import Recorder, record
from harvest_async.replay.recording_reader import read_all
from harvest_async.replay.replayer import replay
from harvest_async.service.app import serve
from harvest_async.service.runner import Runner
from harvest_async.tools.simulate import Simulator, run_simulator, symbols_for
from tests.support.live import KEYS, connected, put, running, wait_for
from tests.support.live import make_settings as service_settings
from tests.support.recording import recording

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "recordings"
FLOOR = 0.4
CYCLES = 10


def make_settings(url: str, **extra: str) -> Settings:
    """Every symbol, the floor above; the heartbeat and reconcile (60 s) never fire."""
    env: dict[str, str | None] = {
        "SYMBOLS": None,
        "PUBLISH_INTERVAL_SEC": str(FLOOR),
        "MAX_PUBLISH_AGE_SEC": "60",
        "INSTANCE": "parity",
        "LIVENESS_TTL_SEC": "3",
        "POLL_INTERVAL_SEC": None,
    }
    return service_settings(url, **{**env, **extra})


Decision = tuple[str, str, str, str]  # event, plan_id (or retract reason), action, trigger


def decision(fields: dict[str, str]) -> Decision:
    if fields["event"] == "retract":
        return ("retract", fields["reason"].split(":", 1)[0], "", "")
    return ("publish", fields["plan_id"], fields["harvest_action"], fields["trigger"])


def per_symbol(entries: list[dict[str, str]]) -> dict[str, list[tuple[float, Decision]]]:
    out: dict[str, list[tuple[float, Decision]]] = {}
    for fields in entries:
        out.setdefault(fields["symbol"], []).append((float(fields["ts_epoch"]), decision(fields)))
    return out


@pytest.mark.slow
async def test_live_service_and_offline_replay_make_the_same_decisions(
    redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(redis_url)
    clock = SystemClock()
    path = tmp_path / "parity.jsonl.gz"
    async with connected(redis_url) as client:
        sim = Simulator(symbols_for(10), seed=4254, start=clock.now())
        await run_simulator(client, KEYS, sim, rate=1.0, duration=0, clock=clock)  # initial
        service_ready, recorder_ready = anyio.Event(), anyio.Event()

        async def on_service(_runner: Runner) -> None:
            service_ready.set()

        async def on_recorder(_recorder: Recorder) -> None:
            recorder_ready.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(serve, settings, handle_signals=False, on_ready=on_service))
            tg.start_soon(
                partial(record, settings, str(path), handle_signals=False, on_ready=on_recorder)
            )
            with anyio.fail_after(10):
                await service_ready.wait()
                await recorder_ready.wait()
            start = math.ceil(clock.now()) + 1.0  # > FLOOR after both startups
            for cycle in range(CYCLES):
                await clock.sleep_until(start + cycle)
                # two atomic batches, at ~+0.05 s and ~+0.10 s
                await run_simulator(
                    client,
                    KEYS,
                    sim,
                    rate=80.0,
                    duration=0.1,
                    clock=clock,
                    initial=False,
                    tick=0.05,
                )
            await clock.sleep_until(start + CYCLES + 0.2)  # the last trailing edges are done
            tg.cancel_scope.cancel()
        stream = await client.xrange(KEYS.stream)
    live_entries: list[dict[str, str]] = [fields for _id, fields in stream]

    offline: list[dict[str, str]] = []

    def collect(outputs: list[Output]) -> None:
        offline.extend(o.audit_fields() for o in outputs)

    stats = replay(path, engine_config(settings), collect)
    assert stats.complete and stats.changes >= CYCLES * 6

    live, replayed = per_symbol(live_entries), per_symbol(offline)
    assert sorted(live) == sorted(replayed)
    for symbol in live:
        assert [d for _, d in replayed[symbol]] == [d for _, d in live[symbol]], symbol
    # timing may differ, within the floor's granularity
    worst = max(
        abs(t_live - t_replay)
        for symbol in live
        for (t_live, _), (t_replay, _) in zip(live[symbol], replayed[symbol], strict=True)
    )
    assert worst < FLOOR, worst
    # the test exercised what it is about: many decisions, trailing edges, retractions
    publishes = [e for e in live_entries if e["event"] == "publish"]
    assert len(live_entries) >= 40
    trailing = [e for e in publishes if 0.3 < (float(e["ts_epoch"]) - start) % 1.0 < 0.7]
    assert trailing, "no floor trailing edge was exercised"
    assert any(e["event"] == "retract" for e in live_entries)
    assert {e["trigger"] for e in publishes} >= {"startup", "change"}
    retracts = len(live_entries) - len(publishes)
    print(  # shown with -s: the numbers behind "parity"
        f"parity: {stats.changes} changes, {len(live)} symbols, {len(publishes)} publishes "
        f"({len(trailing)} at a trailing edge), {retracts} retractions: identical; "
        f"max |t_live - t_replay| = {worst * 1000:.1f} ms"
    )


# -- the recorder --------------------------------------------------------------------------


def market(ts: int) -> dict[str, str]:
    return {
        "sigma": "0.01",
        "ts": "0.4",
        "p_trend": "0.6",
        "p_mr": "0.2",
        "p_chop": "0.2",
        "ts_timestamp": str(ts),
        "mu": "0.0001",
    }


def position(pnl: float) -> dict[str, str]:
    return {"side": "LONG", "entry_price": "100", "unrealized_pnl": repr(pnl), "quantity": "1"}


async def test_recorder_snapshot_changes_gap_and_end(redis_url: str, tmp_path: Path) -> None:
    settings = make_settings(redis_url, SYMBOLS="BTCUSDT,ETHUSDT")
    path = tmp_path / "rec.jsonl"
    now = int(time.time())
    async with connected(redis_url) as client:
        await put(client, KEYS.marketstate("BTCUSDT"), market(now))
        await put(client, KEYS.position("BTCUSDT"), position(1.0))
        await put(client, KEYS.position("XRPUSDT"), position(1.0))  # not a wanted symbol
        async with recording(settings, path, ready_within=5) as recorder:
            await put(client, KEYS.position("BTCUSDT"), position(5.0))
            await put(client, KEYS.position("XRPUSDT"), position(9.0))
            await client.hset(KEYS.marketstate("BTCUSDT"), "mu", "0.0002")  # ignored field
            await client.expire(KEYS.position("BTCUSDT"), 3600)  # no content change
            await wait_for(lambda: _known_pnl(recorder, "BTCUSDT", "0.0002"), "the mu rewrite")
            # the subscription dies and a change is made in the same breath: its
            # notification is lost, so the gap must be recorded as a fresh snapshot
            async with client.pipeline(transaction=False) as pipe:
                pipe.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                pipe.hset(KEYS.position("ETHUSDT"), mapping=position(3.0))  # type: ignore[arg-type]
                await pipe.execute()
            await wait_for(lambda: _known(recorder, "ETHUSDT"), "the resync", limit=8.0)
            await client.delete(KEYS.position("BTCUSDT"))
            await wait_for(lambda: _gone(recorder, "BTCUSDT"), "the deletion")
    head, lines = read_all(path)
    assert head.symbols == ["BTCUSDT", "ETHUSDT"]
    assert set(head.snapshot) == {"BTCUSDT"}
    assert head.snapshot["BTCUSDT"].position == position(1.0)
    assert head.snapshot["BTCUSDT"].marketstate == market(now)  # whole hash, extras too
    kinds = [(type(x).__name__, getattr(x, "kind", ""), getattr(x, "symbol", "")) for x in lines]
    # the position write and the mu rewrite: in that order, or (when both notifications
    # reach one read) as one diff of the symbol's hashes at one instant, in hash order
    assert sorted(kinds[:2]) == [
        ("Set", "marketstate", "BTCUSDT"),  # the mu rewrite: recorded, the replay ignores it
        ("Set", "position", "BTCUSDT"),
    ]
    assert kinds[2:] == [("Snapshot", "", ""), ("Delete", "position", "BTCUSDT"), ("End", "", "")]
    snap = lines[2]
    assert isinstance(snap, Snapshot) and snap.reason == "resubscribed"
    assert snap.state["ETHUSDT"].position == position(3.0)
    (pos,) = [x for x in lines[:2] if isinstance(x, Set) and x.kind == "position"]
    assert pos.fields == position(5.0)
    assert isinstance(lines[3], Delete)
    end = lines[-1]
    assert isinstance(end, End) and end.changes == 3 and end.reason == "cancelled"


async def _known_pnl(recorder: Recorder, symbol: str, mu: str) -> bool:
    row = recorder.known.get(symbol)
    return bool(row and row[0] and row[0].get("mu") == mu and row[2] == position(5.0))


async def _known(recorder: Recorder, symbol: str) -> bool:
    return symbol in recorder.known


async def _gone(recorder: Recorder, symbol: str) -> bool:
    row = recorder.known.get(symbol)
    return row is None or row[2] is None


def _cli_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("THETA_") and k not in ("SYMBOLS", "REDIS_URL", "LOG_LEVEL")
    }


async def test_record_command_duration_and_sigint(redis_url: str, tmp_path: Path) -> None:
    async with connected(redis_url) as client:
        await put(client, KEYS.position("BTCUSDT"), position(1.0))
        out = tmp_path / "cli.jsonl.gz"
        cmd = [sys.executable, "-m", "harvest_async", "record", "--redis-url", redis_url]
        proc = await anyio.open_process(
            [*cmd, "--out", str(out)],
            env=_cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        async with proc:
            assert proc.stdout is not None and proc.stderr is not None
            try:
                await wait_for(lambda: _has_header(out), "the header", limit=30.0)
                await put(client, KEYS.position("BTCUSDT"), position(2.0))
                await anyio.sleep(0.5)
                proc.send_signal(signal.SIGINT)
                with anyio.fail_after(30):
                    await proc.wait()
            except (TimeoutError, AssertionError):  # not started (no header) or not stopped
                proc.kill()
                await proc.wait()
                stderr = b"".join([chunk async for chunk in proc.stderr])
                pytest.fail(f"record did not {'stop' if out.exists() else 'start'}: {stderr!r}")
            stdout = await proc.stdout.receive()
            stderr = b"".join([chunk async for chunk in proc.stderr])
        assert proc.returncode == 0, stderr
        text = stdout.decode()
        assert text.startswith("recorded 1 changes of 1 symbols in ") and "(interrupted)" in text
        _, lines = read_all(out)
        assert isinstance(lines[-1], End) and lines[-1].reason == "interrupted"
        # --duration ends it by itself
        out2 = tmp_path / "cli2.jsonl"
        done = await anyio.run_process(
            [*cmd, "--out", str(out2), "--duration", "0.5"], env=_cli_env(), check=False
        )
        assert done.returncode == 0, done.stderr
        assert "(duration)" in done.stdout.decode()
        _, lines = read_all(out2)
        assert lines == [End(lines[0].at, "duration", 0)]
        # Redis unreachable: exit 3 with one line
        bad = await anyio.run_process(
            [
                sys.executable,
                "-m",
                "harvest_async",
                "record",
                "--out",
                str(tmp_path / "x.jsonl"),
                "--redis-url",
                "unix:///nonexistent/redis.sock",
            ],
            env=_cli_env(),
            check=False,
        )
        assert bad.returncode == 3
        assert b"harvest-async:" in bad.stderr


async def _has_header(path: Path) -> bool:
    """The recorder has flushed its header line (gzip: decodable up to a sync flush)."""
    try:
        data = await anyio.Path(path).read_bytes()
    except OSError:
        return False
    if data[:2] == b"\x1f\x8b":
        data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
    return b"\n" in data


# -- replay --into -------------------------------------------------------------------------


async def test_replay_into_writes_the_recorded_changes(redis_url: str) -> None:
    async with connected(redis_url) as client:
        await put(client, KEYS.risk("BTCUSDT"), {"stop_dist_pct": "0.05"})  # replaced
        stats = await replay_into(
            EXAMPLES / "s8_no_risk_proposal.jsonl", client, KEYS, speed=0, retime=False
        )
        assert stats.changes == 2 and stats.transactions >= 1
        assert await client.exists(KEYS.risk("BTCUSDT")) == 0  # deleted at +60 s
        position_hash = await client.hgetall(KEYS.position("BTCUSDT"))
        head, _ = read_all(EXAMPLES / "s8_no_risk_proposal.jsonl")
        assert position_hash == head.snapshot["BTCUSDT"].position  # as recorded

        before = time.time()
        stats = await replay_into(
            EXAMPLES / "s1_increasing_pnl.jsonl", client, KEYS, speed=100.0, retime=True
        )
        elapsed = time.time() - before
        assert 2.0 <= elapsed < 8.0  # 220 s recorded at 100x (upper bound: slack for CI load)
        fields = await client.hgetall(KEYS.position("BTCUSDT"))
        assert fields["unrealized_pnl"] == "14.0"
        # retimed: the snapshot time is "now", so a live service does not see it stale
        assert abs(float(fields["ts_epoch"]) - time.time()) < 3.0
        ms = await client.hgetall(KEYS.marketstate("BTCUSDT"))
        assert abs(int(ms["ts_timestamp"]) - time.time()) < 5.0


async def test_replay_into_feeds_a_live_service(redis_url: str) -> None:
    """A rehearsal: a recording written into Redis is published by a running service."""
    settings = make_settings(redis_url, PUBLISH_INTERVAL_SEC="0")
    async with connected(redis_url) as client, running(settings):
        await replay_into(EXAMPLES / "s7_profit_lock.jsonl", client, KEYS, speed=0)

        async def locked() -> bool:
            got = await client.hget(KEYS.proposal("ETHUSDT"), "new_sl_proposed")
            return got == "99.8"

        await wait_for(locked, "the profit lock")


async def test_a_key_of_another_type_is_recorded_as_the_service_reads_it(
    redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, SYMBOLS="BTCUSDT")
    path = tmp_path / "wrongtype.jsonl"
    async with connected(redis_url) as client:
        await put(client, KEYS.marketstate("BTCUSDT"), market(int(time.time())))
        await put(client, KEYS.position("BTCUSDT"), position(5.0))
        async with recording(settings, path, ready_within=5) as recorder:
            await client.set(KEYS.risk("BTCUSDT"), "not a hash")

            async def seen() -> bool:
                row = recorder.known.get("BTCUSDT")
                return bool(row and row[1])

            await wait_for(seen, "the risk key")
    _, lines = read_all(path)
    change = lines[0]
    assert isinstance(change, Set) and change.kind == "risk"
    assert change.fields["stop_dist_pct"].startswith("<not a hash")
    offline: list[Output] = []
    replay(path, engine_config(settings), offline.extend)
    assert [o.audit_fields()["event"] for o in offline] == ["publish", "retract"]
    assert offline[1].audit_fields()["reason"].startswith("invalid_risk")
