"""Replaying what Redis already recorded (each test runs once per server flavour).

* `record --from-streams` turns input-stream history into a recording that replays to
  the same decisions as a recording made live at the same time;
* `replay --against-audit` diffs a replay with the live service's audit stream (or an
  `export-audit` file): it agrees with the live service, and finds exactly a planted
  difference (a publish deleted from the exported audit; one input entry changed);
* change signals (entries with a symbol only), `--snapshot-from`, trimmed streams.

The live run is paced like tests/integration/test_record_replay_parity.py (see its
docstring): input bursts at the start of each 1 s cycle, a 0.4 s floor, so no input
change lands within milliseconds of a floor window's end.
"""

from __future__ import annotations

import gzip
import math
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis

from harvest_async.clock import SystemClock
from harvest_async.config import Settings, engine_config, settings_from_env
from harvest_async.core.engine import Output
from harvest_async.core.keys import Keys
from harvest_async.redis_io.input_writer import InputWriter
from harvest_async.redis_io.streams import history_client
from harvest_async.replay.format import Header
from harvest_async.replay.from_streams import parse_stream_specs
from harvest_async.replay.from_streams_record import merged_entries, record_from_streams
from harvest_async.replay.recorder import Recorder, record
from harvest_async.replay.recording_reader import read_all
from harvest_async.replay.replayer import replay
from harvest_async.replay.stream_window import entry_key, parse_bound
from harvest_async.service.app import serve
from harvest_async.service.runner import Runner
from harvest_async.tools.server_binaries import ServerBinary
from harvest_async.tools.simulate import Simulator, run_simulator, symbols_for

KEYS = Keys()
FLOOR = 0.4
CYCLES = 10
STREAMS = {
    "marketstate": "quantum:stream:marketstate",
    "risk": "quantum:stream:risk.proposal",
    "position": "quantum:stream:positions",
}
PLANTED = "planted:stream:positions"
SCRIPTED = "ZZZUSDT"  # a hand-driven symbol: NONE, then PARTIAL_25 at cycle 5
SCRIPTED_CYCLE = 5


def make_settings(url: str, **extra: str) -> Settings:
    env = {
        "REDIS_URL": url,
        "PUBLISH_INTERVAL_SEC": str(FLOOR),
        "MAX_PUBLISH_AGE_SEC": "60",
        "INSTANCE": "history",
        "LIVENESS_TTL_SEC": "3",
    }
    env.update(extra)
    return settings_from_env(env)


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@dataclass(frozen=True)
class _Write:
    kind: str
    symbol: str
    op: str
    fields: dict[str, str]


def scripted_market(now: float) -> _Write:
    fields = {
        "sigma": "0.01",
        "ts": "0.4",
        "p_trend": "0.6",
        "p_mr": "0.2",
        "p_chop": "0.2",
        "ts_timestamp": str(int(now)),
    }
    return _Write("marketstate", SCRIPTED, "set", fields)


def scripted_position(pnl: float) -> _Write:
    fields = {"side": "LONG", "entry_price": "100", "unrealized_pnl": repr(pnl), "quantity": "1"}
    return _Write("position", SCRIPTED, "set", fields)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "harvest_async", *args]


async def harvest(*args: str) -> subprocess.CompletedProcess[bytes]:
    """`harvest-async ARGS` in a subprocess (not checked)."""
    return await anyio.run_process(cli(*args), env=cli_env(), check=False)


def cli_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("THETA_")
        and k not in ("SYMBOLS", "REDIS_URL", "LOG_LEVEL", "PUBLISH_INTERVAL_SEC")
    } | {"PUBLISH_INTERVAL_SEC": str(FLOOR), "MAX_PUBLISH_AGE_SEC": "60"}


Decision = tuple[str, str, str, str]  # event, plan_id (or retract label), action, trigger


def decisions(entries: list[dict[str, str]]) -> dict[str, list[tuple[float, Decision]]]:
    out: dict[str, list[tuple[float, Decision]]] = {}
    for f in entries:
        if f["event"] == "retract":
            d: Decision = ("retract", f["reason"].split(":", 1)[0], "", "")
        else:
            d = ("publish", f["plan_id"], f["harvest_action"], f["trigger"])
        out.setdefault(f["symbol"], []).append((float(f["ts_epoch"]), d))
    return out


def replayed(path: Path, settings: Settings) -> list[dict[str, str]]:
    entries: list[dict[str, str]] = []

    def collect(outputs: list[Output]) -> None:
        entries.extend(o.audit_fields() for o in outputs)

    replay(path, engine_config(settings), collect)
    return entries


async def run_live(url: str, settings: Settings, live_path: Path) -> None:
    """The simulator writes hashes and stream entries while the service and `record`
    run; returns when the last trailing edges are done."""
    clock = SystemClock()
    async with connected(url) as client:
        sim = Simulator(symbols_for(10), seed=1515, start=clock.now())
        await run_simulator(
            client, KEYS, sim, rate=1.0, duration=0, clock=clock, streams=STREAMS
        )  # the initial state, as hashes and entries
        scripted = InputWriter(client, KEYS, ttl={}, streams=STREAMS)
        await scripted.write(
            [scripted_market(clock.now()), scripted_position(1.0)], stream_at=clock.now()
        )
        service_ready, recorder_ready = anyio.Event(), anyio.Event()

        async def on_service(_runner: Runner) -> None:
            service_ready.set()

        async def on_recorder(_recorder: Recorder) -> None:
            recorder_ready.set()

        async with anyio.create_task_group() as tg:
            # the service first: its startup publishes precede the recording's start, as
            # in an incident window (the live state at the start comes from the audit)
            tg.start_soon(partial(serve, settings, handle_signals=False, on_ready=on_service))
            with anyio.fail_after(10):
                await service_ready.wait()
            tg.start_soon(
                partial(
                    record, settings, str(live_path), handle_signals=False, on_ready=on_recorder
                )
            )
            with anyio.fail_after(10):
                await recorder_ready.wait()
            start = math.ceil(clock.now()) + 1.0
            for cycle in range(CYCLES):
                await clock.sleep_until(start + cycle)
                if cycle == SCRIPTED_CYCLE:
                    await scripted.write([scripted_position(5.0)], stream_at=clock.now())
                await run_simulator(
                    client,
                    KEYS,
                    sim,
                    rate=80.0,
                    duration=0.1,
                    clock=clock,
                    initial=False,
                    tick=0.05,
                    streams=STREAMS,
                )
            await clock.sleep_until(start + CYCLES + 0.2)
            tg.cancel_scope.cancel()


async def plant_changed_entry(client: aioredis.Redis) -> str:
    """A copy of the position stream (same IDs) whose scripted PnL 5.0 entry says 1.0
    again: to the replay, that input did not change. Returns the changed entry's ID."""
    changed = ""
    for entry_id, fields in await client.xrange(STREAMS["position"]):
        copy = dict(fields)
        if copy.get("symbol") == SCRIPTED and copy.get("unrealized_pnl") == "5.0":
            copy["unrealized_pnl"] = "1.0"
            changed = entry_id
        await client.xadd(PLANTED, copy, id=entry_id)  # type: ignore[arg-type]
    assert changed
    return changed


def differences(stdout: bytes) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    lines = [msgspec.json.decode(line) for line in stdout.splitlines() if line.strip()]
    found = [x for x in lines if x["type"] == "difference" and x["counted"]]
    summary = next(x for x in lines if x["type"] == "summary")
    return found, summary


@pytest.mark.slow
async def test_stream_history_replays_like_live_and_agrees_with_the_audit(
    redis_url: str, redis_binary: ServerBinary, tmp_path: Path
) -> None:
    if redis_binary.flavour == "redis" and int(redis_binary.version.split(".")[0]) < 7:
        pytest.skip("the simulator stamps its stream entries with `<ms>-*` IDs (Redis 7.0+)")
    settings = make_settings(redis_url)
    live_path = tmp_path / "live.jsonl.gz"
    await run_live(redis_url, settings, live_path)
    head, lines = read_all(live_path)
    assert isinstance(head, Header)
    start, end = head.start, lines[-1].at
    streams = ",".join(f"{name}={kind}" for kind, name in STREAMS.items())

    # 1. the recording from stream history replays to the live recording's decisions
    from_streams = tmp_path / "from-streams.jsonl.gz"
    window = ["--since", repr(start), "--until", repr(end)]
    done = await harvest(
        "record",
        "--out",
        str(from_streams),
        "--redis-url",
        redis_url,
        "--from-streams",
        streams,
        *window,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().startswith("recorded "), done.stdout
    assert b"warning" not in done.stderr, done.stderr
    live_replay, stream_replay = (
        decisions(replayed(live_path, settings)),
        decisions(replayed(from_streams, settings)),
    )
    assert sorted(stream_replay) == sorted(live_replay)
    for symbol, expected in live_replay.items():
        assert [d for _, d in stream_replay[symbol]] == [d for _, d in expected], symbol
        for (t_stream, _), (t_live, _) in zip(stream_replay[symbol], expected, strict=True):
            assert abs(t_stream - t_live) < FLOOR, symbol
    total = sum(len(v) for v in live_replay.values())
    assert total >= 40  # the test exercised something
    async with connected(redis_url) as client:
        audit = [fields for _id, fields in await client.xrange(KEYS.stream)]
    assert any(e["event"] == "retract" for e in audit)
    scripted_live = [e for e in audit if e["symbol"] == SCRIPTED and e["event"] == "publish"]
    assert [e["harvest_action"] for e in scripted_live] == ["NONE", "PARTIAL_25"]

    # 2. against the live audit stream: agree (exit 0), as text and as JSON lines
    against = ("replay", str(from_streams), "--against-audit", redis_url)
    done = await harvest(*against)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert "\nagree: " in done.stdout.decode(), done.stdout
    done = await harvest(*against, "--format", "jsonl")
    found, summary = differences(done.stdout)
    assert done.returncode == 0 and found == [] and summary["agrees"] is True

    # 3. export-audit, then against the file: agree
    exported = tmp_path / "audit.jsonl"
    since = repr(start - 70.0)  # one heartbeat before: the live state at the start
    done = await harvest(
        "export-audit",
        "--redis-url",
        redis_url,
        "--out",
        str(exported),
        "--since",
        since,
        "--until",
        repr(end),
    )
    assert done.returncode == 0, done.stderr
    rows = [msgspec.json.decode(x) for x in exported.read_bytes().splitlines()]
    assert [{k: v for k, v in r.items() if k != "id"} for r in rows] == audit
    done = await harvest("replay", str(from_streams), "--against-audit", str(exported))
    assert done.returncode == 0, done.stdout.decode()

    # 4. a publish deleted from the exported audit: exactly that, only in the replay
    middle = [
        r
        for r in rows
        if r["event"] == "publish"
        and r["trigger"] == "change"
        and r["symbol"] != SCRIPTED
        and start + 3 < float(r["ts_epoch"]) < end - 3
    ]
    victim = middle[len(middle) // 2]
    planted_audit = tmp_path / "audit-planted.jsonl"
    planted_audit.write_bytes(
        b"".join(msgspec.json.encode(r) + b"\n" for r in rows if r is not victim)
    )
    done = await harvest(
        "replay", str(from_streams), "--against-audit", str(planted_audit), "--format", "jsonl"
    )
    found, summary = differences(done.stdout)
    assert done.returncode == 1, done.stderr
    assert [(d["kind"], d["symbol"], d["replay"]["plan_id"]) for d in found] == [
        ("only_replay", victim["symbol"], victim["plan_id"])
    ]
    assert abs(found[0]["replay"]["at"] - float(victim["ts_epoch"])) < FLOOR
    assert summary["agrees"] is False and summary["only_replay"] == 1

    # 5. one input entry changed (in a copy of the position stream): exactly the decision
    #    it caused is missing from the replay
    async with connected(redis_url) as client:
        changed_id = await plant_changed_entry(client)
    planted_rec = tmp_path / "planted.jsonl.gz"
    planted_streams = streams.replace(STREAMS["position"], PLANTED)
    done = await harvest(
        "record",
        "--out",
        str(planted_rec),
        "--redis-url",
        redis_url,
        "--from-streams",
        planted_streams,
        *window,
    )
    assert done.returncode == 0, done.stderr
    done = await harvest(
        "replay", str(planted_rec), "--against-audit", redis_url, "--format", "jsonl"
    )
    found, summary = differences(done.stdout)
    assert done.returncode == 1, done.stderr
    assert [(d["kind"], d["symbol"], d["audit"]["action"]) for d in found] == [
        ("only_audit", SCRIPTED, "PARTIAL_25")
    ]
    changed_at = int(changed_id.split("-")[0]) / 1000
    assert abs(found[0]["audit"]["at"] - changed_at) < FLOOR
    # and the text report names it
    done = await harvest("replay", str(planted_rec), "--against-audit", redis_url)
    text = done.stdout.decode()
    assert done.returncode == 1 and "DIFFER: 1 differences in 1 of " in text, text
    assert f"{SCRIPTED}: only in the audit" in text


# -- change signals, snapshots, trimming -----------------------------------------------


def market(ts: int, sigma: str = "0.01") -> dict[str, str]:
    return {
        "sigma": sigma,
        "ts": "0.4",
        "p_trend": "0.6",
        "p_mr": "0.2",
        "p_chop": "0.2",
        "ts_timestamp": str(ts),
    }


def position(pnl: float) -> dict[str, str]:
    return {"side": "LONG", "entry_price": "100", "unrealized_pnl": repr(pnl), "quantity": "1"}


async def test_change_signals_are_completed_from_a_snapshot_or_reported(
    redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(redis_url)
    ms = int(SystemClock().now() * 1000) - 60_000
    signals = "quantum:stream:position.signals"
    async with connected(redis_url) as client:
        # BTC: full market state entries; positions only signalled. ETH: untouched.
        await client.xadd(
            STREAMS["marketstate"], {"symbol": "BTCUSDT", **market(ms // 1000)}, id=f"{ms}-0"
        )
        await client.xadd(signals, {"symbol": "BTCUSDT"}, id=f"{ms + 1000}-0")  # superseded
        await client.xadd(signals, {"symbol": "BTCUSDT"}, id=f"{ms + 2000}-0")  # the last
        await client.xadd(signals, {"symbol": "SOLUSDT"}, id=f"{ms + 3000}-0")  # key gone since
        await client.hset(KEYS.marketstate("BTCUSDT"), mapping=market(ms // 1000))  # type: ignore[arg-type]
        await client.hset(KEYS.position("BTCUSDT"), mapping=position(5.0))  # type: ignore[arg-type]
        await client.hset(KEYS.position("ETHUSDT"), mapping=position(2.0))  # type: ignore[arg-type]
        specs = parse_stream_specs([f"{STREAMS['marketstate']}=marketstate,{signals}=position"])
        out = tmp_path / "signals.jsonl"

        # without a snapshot every signal is unusable, never guessed
        stats = await record_from_streams(settings, str(out), specs)
        assert stats.unusable == 3 and stats.changes == 1
        assert "no --snapshot-from" in stats.examples[0]
        head, lines = read_all(out)
        assert [type(x).__name__ for x in lines] == ["Set", "End"]
        assert head.snapshot == {}

        # with one: the key's last signal is completed, the earlier one is not; the key
        # that no entry touched starts as the snapshot shows it
        stats = await record_from_streams(settings, str(out), specs, snapshot_from=redis_url)
        assert (stats.completed, stats.unusable) == (1, 2)
        assert "not its key's last entry" in stats.examples[0]
        assert "no such key any more" in stats.examples[1]
        assert stats.unusable_symbols == {"BTCUSDT", "SOLUSDT"}
        head, lines = read_all(out)
        assert head.snapshot["ETHUSDT"].position == position(2.0)
        assert "BTCUSDT" not in head.snapshot  # its first entry is in the window
        sets = [(x.at, x.kind, x.symbol, x.fields) for x in lines if type(x).__name__ == "Set"]
        assert sets == [
            (ms / 1000, "marketstate", "BTCUSDT", market(ms // 1000)),
            ((ms + 2000) / 1000, "position", "BTCUSDT", position(5.0)),
        ]
        assert head.meta["snapshot_from"] == redis_url
        assert "no stream for risk: held at the snapshot's values" in stats.warnings()


async def test_a_stream_trimmed_past_since_is_reported_with_its_first_time(
    redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(redis_url)
    ms = 1_767_225_600_000
    name = STREAMS["position"]
    async with connected(redis_url) as client:
        for i in range(10):
            fields = {"symbol": "BTCUSDT", **position(float(i))}
            await client.xadd(name, fields, id=f"{ms + i * 1000}-0")  # type: ignore[arg-type]
        await client.xtrim(name, minid=f"{ms + 5000}-0", approximate=False)
    out = tmp_path / "trimmed.jsonl"
    specs = parse_stream_specs([f"{name}=position"])
    stats = await record_from_streams(
        settings,
        str(out),
        specs,
        since=parse_bound(str((ms + 2000) / 1000), option="--since"),
        until=parse_bound(f"{ms + 7000}-0", option="--until"),
    )
    warnings = "\n".join(stats.warnings())
    assert "trimmed past --since: its history starts at 2026-01-01T00:00:05.000Z" in warnings
    assert f"(entry {ms + 5000}-0)" in warnings
    assert "first appear after --since in a history that is incomplete" in warnings
    head, lines = read_all(out)
    assert head.start == (ms + 2000) / 1000 and head.snapshot == {}
    assert [x.at for x in lines] == [(ms + k) / 1000 for k in (5000, 6000, 7000, 7000)]
    # untrimmed: entries before --since make the initial state, no warning
    stats = await record_from_streams(
        settings,
        str(out),
        specs,
        since=parse_bound(str((ms + 7000) / 1000), option="--since"),
    )
    assert stats.warnings() == ["no stream for marketstate, risk: absent throughout"]
    head, lines = read_all(out)
    assert head.snapshot["BTCUSDT"].position == position(6.0)
    assert stats.folded == 2


async def test_streams_are_merged_in_id_order_page_by_page(redis_url: str) -> None:
    names = ["s:a", "s:b", "s:c", "s:missing"]
    ids = {
        "s:a": ["1-0", "1-1", "5-0", "9-0", "9-1", "12-0"],
        "s:b": ["1-0", "2-0", "5-0", "6-0", "30-0"],
        "s:c": ["3-0", "9-0"],
    }
    async with connected(redis_url) as client:
        for name, entry_ids in ids.items():
            for entry_id in entry_ids:
                await client.xadd(name, {"n": f"{name}/{entry_id}"}, id=entry_id)
        reader = history_client(redis_url, name="test")
        try:
            ends = ["+", "+", "+", None]
            chunks = [c async for c in merged_entries(reader, names, "-", ends, page=2)]
        finally:
            await reader.aclose()
    got = [
        (ms, seq, index, fields["n"]) for chunk in chunks for ms, seq, index, _id, fields in chunk
    ]
    expected = sorted(
        (*entry_key(entry_id), names.index(name), f"{name}/{entry_id}")
        for name, entry_ids in ids.items()
        for entry_id in entry_ids
    )
    assert got == expected
    assert len(chunks) > 3  # it really went page by page


async def test_export_audit_window_symbols_gzip_and_trimming(
    redis_url: str, tmp_path: Path
) -> None:
    ms = 1_767_225_600_000
    async with connected(redis_url) as client:
        for i in range(6):
            fields = {"event": "retract", "symbol": ("BTCUSDT", "ETHUSDT")[i % 2], "seq": str(i)}
            await client.xadd(KEYS.stream, fields, id=f"{ms + i * 1000}-0")  # type: ignore[arg-type]
        # stdout, a window by ID and by time, one symbol
        done = await harvest(
            "export-audit", "--redis-url", redis_url, "--symbols", "BTCUSDT",
            "--since", f"{ms + 1000}-0", "--until", str((ms + 4000) / 1000),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        rows = [msgspec.json.decode(x) for x in done.stdout.splitlines()]
        assert rows == [
            {"id": f"{ms + 2000}-0", "event": "retract", "symbol": "BTCUSDT", "seq": "2"},
            {"id": f"{ms + 4000}-0", "event": "retract", "symbol": "BTCUSDT", "seq": "4"},
        ]
        assert b"exported 2 entries of quantum:stream:harvest.proposal" in done.stderr
        # trimmed past --since: said so; a .gz name is compressed
        await client.xtrim(KEYS.stream, minid=f"{ms + 3000}-0", approximate=False)
        out = tmp_path / "audit.jsonl.gz"
        done = await harvest(
            "export-audit", "--redis-url", redis_url, "--since", str(ms / 1000), "--out", str(out)
        )
        assert done.returncode == 0, done.stderr
        assert b"starts at 2026-01-01T00:00:03.000Z" in done.stderr
        assert b"older entries were trimmed away" in done.stderr
        assert len(gzip.decompress(out.read_bytes()).splitlines()) == 3
