"""`doctor` against a real server: healthy, and each broken case reported truthfully.

Most cases call `run_doctor` in-process on a state written by the test; the exit codes
(0 healthy, 1 a check failed, 3 Redis unreachable or refusing us) and `--json` are checked
through the real command line in a subprocess.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from harvest_async.config import Settings, settings_from_env
from harvest_async.core.keys import Keys
from harvest_async.core.proposal import PROPOSAL_FIELDS, SCHEMA_VERSION
from harvest_async.errors import AuthenticationFailed
from harvest_async.redis_io.client import check_redis
from harvest_async.service.app import serve
from harvest_async.service.runner import Runner
from harvest_async.tools.doctor import CHECK_NAMES, Check, Report, render_text, run_doctor
from harvest_async.tools.embedded_server import EmbeddedRedis

KEYS = Keys()


def settings(url: str, **env: str) -> Settings:
    return settings_from_env({"REDIS_URL": url, "INSTANCE": "doctor-test", **env})


def check(report: Report, name: str) -> Check:
    found = [c for c in report.checks if c.name == name]
    assert found, f"no {name} check in {[c.name for c in report.checks]}"
    return found[0]


def market(age: float = 0.0) -> dict[str, str]:
    return {
        "sigma": "0.005",
        "ts": "0.5",
        "p_trend": "0.6",
        "p_mr": "0.2",
        "p_chop": "0.2",
        "ts_timestamp": str(int(time.time() - age)),
    }


def position(age: float = 0.0) -> dict[str, str]:
    return {
        "side": "LONG",
        "quantity": "1.0",
        "entry_price": "100.0",
        "current_price": "101.0",
        "unrealized_pnl": "1.0",
        "created_at": str(int(time.time()) - 60),
        "ts_epoch": repr(round(time.time() - age, 3)),
    }


async def put_inputs(
    client: aioredis.Redis,
    symbol: str,
    *,
    market_age: float = 0.0,
    position_age: float = 0.0,
    with_risk: bool = True,
) -> None:
    await client.hset(KEYS.marketstate(symbol), mapping=market(market_age))  # type: ignore[arg-type]
    if with_risk:
        await client.hset(
            KEYS.risk(symbol),
            mapping={"stop_dist_pct": "0.02", "ts_epoch": repr(time.time())},
        )
    await client.hset(KEYS.position(symbol), mapping=position(position_age))  # type: ignore[arg-type]


def contract_hash(symbol: str, age: float = 0.0) -> dict[str, str]:
    fields = dict.fromkeys(PROPOSAL_FIELDS, "0.0")
    fields.update(
        symbol=symbol,
        harvest_action="NONE",
        schema_version=SCHEMA_VERSION,
        ts_epoch=repr(time.time() - age),
        new_sl_proposed="None",
    )
    return fields


async def beat(client: aioredis.Redis, instance: str) -> None:
    key = KEYS.liveness(instance)
    await client.hset(
        key,
        mapping={
            "instance": instance,
            "pid": "1",
            "host": "h",
            "version": "0",
            "symbols": "1",
            "last_beat_epoch": repr(time.time()),
        },
    )
    await client.expire(key, 30)


@pytest.fixture
async def client(redis_url: str) -> Any:
    c = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield c
    await c.aclose()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harvest_async", "doctor", *args],
        env={**os.environ, "LOG_LEVEL": "WARNING", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- healthy -----------------------------------------------------------------------------------
async def test_healthy_service_passes_every_check(redis_url: str, client: aioredis.Redis) -> None:
    for sym in ("BTCUSDT", "ETHUSDT"):
        await put_inputs(client, sym)
    cfg = settings(redis_url, PUBLISH_INTERVAL_SEC="0")
    ready = anyio.Event()

    async def on_ready(_runner: Runner) -> None:
        ready.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(cfg, on_ready=on_ready, handle_signals=False))
        with anyio.fail_after(10):
            await ready.wait()
        report = await run_doctor(cfg, instance="doctor-test")
        # the real command line, as an operator (or the compose healthcheck) runs it
        proc = await anyio.to_thread.run_sync(
            lambda: run_cli("--json", env={"REDIS_URL": redis_url, "INSTANCE": "doctor-test"})
        )
        tg.cancel_scope.cancel()

    assert [c.name for c in report.checks] == [
        "redis",
        "notifications",
        "inputs",
        "publisher",
        "proposals",
        "stream",
    ]
    assert {c.name: c.status for c in report.checks} == dict.fromkeys(
        [c.name for c in report.checks], "PASS"
    ), render_text(report)
    assert report.exit_code == 0
    assert "2 symbols" in check(report, "inputs").message
    assert "2 proposals with every contract field" in check(report, "proposals").message
    assert "doctor-test" in check(report, "publisher").message
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["ok"] is True
    assert body["exit_code"] == 0
    assert {c["status"] for c in body["checks"]} == {"PASS"}
    # a check that passed asks for nothing
    assert {c["name"]: c["action"] for c in body["checks"]} == dict.fromkeys(CHECK_NAMES, "")
    assert proc.stderr == ""


# -- Redis unreachable / refusing --------------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: connections are refused


def test_unreachable_redis_exits_3_with_one_line() -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    proc = run_cli("--json", "--redis-url", url)
    assert proc.returncode == 3
    body = json.loads(proc.stdout)
    assert body["exit_code"] == 3
    assert [c["name"] for c in body["checks"]] == ["redis"]
    assert body["checks"][0]["status"] == "FAIL"
    assert "cannot reach" in body["checks"][0]["message"]
    assert "start Redis or fix REDIS_URL" in body["checks"][0]["action"]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("harvest-async: doctor: cannot reach")

    text = run_cli("--redis-url", url)
    assert text.returncode == 3
    assert text.stdout.splitlines()[1].startswith("FAIL  redis")


async def test_wrong_or_missing_password_is_reported_as_refused(
    redis_server_factory: Callable[..., EmbeddedRedis], tmp_path: Path
) -> None:
    server = redis_server_factory()
    # set after start: the fixture's readiness PING has no password
    server.command("CONFIG", "SET", "requirepass", "s3cret")
    report = await run_doctor(settings(server.url))
    assert report.exit_code == 3
    assert check(report, "redis").status == "FAIL"
    assert "authentication" in check(report, "redis").message.lower()
    assert "REDIS_PASSWORD_FILE" in check(report, "redis").action

    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    report = await run_doctor(settings(server.url, REDIS_PASSWORD_FILE=str(wrong)))
    assert report.exit_code == 3

    right = tmp_path / "right"
    right.write_text("s3cret\n")
    report = await run_doctor(settings(server.url, REDIS_PASSWORD_FILE=str(right)))
    assert check(report, "redis").status == "PASS"
    assert report.unreachable is False
    admin = aioredis.Redis.from_url(server.url, password="s3cret")
    await admin.config_set("requirepass", "")  # so the fixture can shut it down quickly
    await admin.aclose()


async def test_a_password_the_server_does_not_have_fails_as_run_fails(
    redis_url: str, tmp_path: Path
) -> None:
    # redis-py's RESP3 HELLO accepts any password for a user without one; the service
    # (RESP2 AUTH) is refused, and so must doctor be
    password = tmp_path / "password"
    password.write_text("not-needed\n")
    cfg = settings(redis_url, REDIS_PASSWORD_FILE=str(password))
    report = await run_doctor(cfg)
    redis = check(report, "redis")
    assert (redis.status, report.exit_code) == ("FAIL", 3)
    assert "has no password, but one is configured" in redis.message
    assert "remove it from REDIS_URL" in redis.action
    with pytest.raises(AuthenticationFailed, match="the server has no password"):
        await check_redis(cfg)  # what `run` checks first

    proc = run_cli("--redis-url", redis_url, env={"REDIS_PASSWORD_FILE": str(password)})
    assert proc.returncode == 3
    assert "has no password, but one is configured" in proc.stderr


# -- notifications -----------------------------------------------------------------------------
async def test_notifications_off_fail_with_the_config_file_hint(
    redis_url: str, client: aioredis.Redis
) -> None:
    await client.config_set("notify-keyspace-events", "")
    report = await run_doctor(settings(redis_url), only=["notifications"])
    notif = check(report, "notifications")
    assert notif.status == "FAIL"
    assert report.exit_code == 1
    assert "lacks K, h, g, x" in notif.message
    assert "config file" in notif.action and "CONFIG SET" in notif.action
    text = render_text(report)
    assert "FAIL  notifications" in text and "-> put `notify-keyspace-events KEA`" in text

    proc = run_cli("--only", "notifications", "--redis-url", redis_url)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "harvest-async: doctor: 1 check(s) failed: notifications"


async def test_notifications_without_del_and_expiry_warn(
    redis_url: str, client: aioredis.Redis
) -> None:
    await client.config_set("notify-keyspace-events", "Kh")
    report = await run_doctor(settings(redis_url), only=["notifications"])
    notif = check(report, "notifications")
    assert notif.status == "WARN"
    assert "lacks g, x" in notif.message
    assert report.exit_code == 0

    await client.config_set("notify-keyspace-events", "KEA")
    report = await run_doctor(settings(redis_url), only=["notifications"])
    assert check(report, "notifications").status == "PASS"


# -- inputs ------------------------------------------------------------------------------------
async def test_stale_inputs_warn_for_some_and_fail_for_all(
    redis_url: str, client: aioredis.Redis
) -> None:
    await put_inputs(client, "BTCUSDT")
    await put_inputs(client, "ETHUSDT", market_age=1000)
    report = await run_doctor(settings(redis_url), only=["inputs"])
    inputs = check(report, "inputs")
    assert inputs.status == "WARN"
    assert "ETHUSDT stale_marketstate" in inputs.message
    assert inputs.details["problems"] == ["ETHUSDT"]
    assert inputs.details["per_symbol"]["ETHUSDT"]["marketstate_age_sec"] >= 999
    assert inputs.details["per_symbol"]["BTCUSDT"]["state"] == "fresh"
    text = render_text(report)
    assert "ETHUSDT: stale_marketstate: market state is" in text
    assert "MAX_INPUT_AGE_SEC=300" in text

    await put_inputs(client, "BTCUSDT", position_age=400)
    report = await run_doctor(settings(redis_url), only=["inputs"])
    inputs = check(report, "inputs")
    assert inputs.status == "FAIL"
    assert "no position has usable inputs" in inputs.message
    assert "BTCUSDT stale_position" in inputs.message
    assert report.exit_code == 1

    # a longer limit makes the same inputs fresh: the check uses the service's settings
    report = await run_doctor(settings(redis_url, MAX_INPUT_AGE_SEC="2000"), only=["inputs"])
    assert check(report, "inputs").status == "PASS"


async def test_inputs_missing_market_state_and_missing_risk(
    redis_url: str, client: aioredis.Redis
) -> None:
    await client.hset(KEYS.position("XRPUSDT"), mapping=position())  # type: ignore[arg-type]
    await put_inputs(client, "ADAUSDT", with_risk=False)
    report = await run_doctor(settings(redis_url), only=["inputs"])
    inputs = check(report, "inputs")
    assert inputs.status == "WARN"
    assert "XRPUSDT missing_marketstate" in inputs.message
    assert "1 on the fallback stop" in inputs.message

    await client.delete(KEYS.position("XRPUSDT"))
    report = await run_doctor(settings(redis_url), only=["inputs"])
    inputs = check(report, "inputs")
    assert inputs.status == "WARN"
    assert "no symbol has a risk proposal" in inputs.message


async def test_inputs_configured_symbols_and_none_found(
    redis_url: str, client: aioredis.Redis
) -> None:
    report = await run_doctor(settings(redis_url), only=["inputs"])
    assert check(report, "inputs").status == "WARN"
    assert "no position keys" in check(report, "inputs").message

    await put_inputs(client, "BTCUSDT")
    await client.hset(KEYS.position("ETHUSDT"), mapping={"side": "FLAT", "quantity": "0"})
    report = await run_doctor(settings(redis_url, SYMBOLS="BTCUSDT,ETHUSDT"), only=["inputs"])
    inputs = check(report, "inputs")
    assert inputs.status == "PASS"
    assert "2 symbols (SYMBOLS), 1 with a position, 1 fresh" in inputs.message


# -- publisher ---------------------------------------------------------------------------------
async def test_no_publisher_alive_fails(redis_url: str, client: aioredis.Redis) -> None:
    report = await run_doctor(settings(redis_url), only=["publisher"])
    pub = check(report, "publisher")
    assert pub.status == "FAIL"
    assert "no harvest-async publisher is alive" in pub.message
    assert "systemctl start harvest-async" in pub.action

    await beat(client, "vps-1")
    report = await run_doctor(settings(redis_url), only=["publisher"])
    assert check(report, "publisher").status == "PASS"
    # a named instance must be the one alive
    report = await run_doctor(settings(redis_url), only=["publisher"], instance="vps-2")
    pub = check(report, "publisher")
    assert pub.status == "FAIL"
    assert "'vps-2' is not alive" in pub.message and "alive: vps-1" in pub.message
    # two publishers for the same keys: a warning
    await beat(client, "vps-2")
    report = await run_doctor(settings(redis_url), only=["publisher"])
    assert check(report, "publisher").status == "WARN"
    assert "2 publishers alive" in check(report, "publisher").message


# -- proposals ---------------------------------------------------------------------------------
async def test_proposal_hash_missing_contract_fields_fails(
    redis_url: str, client: aioredis.Redis
) -> None:
    await client.hset(KEYS.proposal("BTCUSDT"), mapping=contract_hash("BTCUSDT"))
    original = {  # what the original publisher wrote: no plan_id, seq, trigger, ...
        "harvest_action": "NONE",
        "new_sl_proposed": "None",
        "R_net": "0.5",
        "kill_score": "0.5",
        "last_update_epoch": str(int(time.time())),
    }
    await client.hset(KEYS.proposal("ETHUSDT"), mapping=original)  # type: ignore[arg-type]
    report = await run_doctor(settings(redis_url), only=["proposals"])
    props = check(report, "proposals")
    assert props.status == "FAIL"
    assert "1 of 2 proposal hashes lack contract fields" in props.message
    assert "ETHUSDT" in props.message
    missing = props.details["missing_fields"]["ETHUSDT"]
    assert {"plan_id", "seq", "trigger", "schema_version"} <= set(missing)
    assert "BTCUSDT" not in props.details["missing_fields"]
    assert "another writer" in props.action


async def test_old_proposals_warn_and_none_with_positions_warn(
    redis_url: str, client: aioredis.Redis
) -> None:
    await put_inputs(client, "BTCUSDT")
    report = await run_doctor(settings(redis_url), only=["inputs", "proposals"])
    props = check(report, "proposals")
    assert props.status == "WARN"
    assert "no proposal hashes" in props.message and "1 symbols have a position" in props.message

    await client.hset(KEYS.proposal("BTCUSDT"), mapping=contract_hash("BTCUSDT", age=500))
    report = await run_doctor(settings(redis_url), only=["proposals"])
    props = check(report, "proposals")
    assert props.status == "WARN"
    assert "older than 130 s (2 heartbeats + floor)" in props.message  # 2 x 60 s + 10 s


# -- stream ------------------------------------------------------------------------------------
async def test_stream_length_and_last_entry_age(redis_url: str, client: aioredis.Redis) -> None:
    await client.hset(KEYS.proposal("BTCUSDT"), mapping=contract_hash("BTCUSDT"))
    report = await run_doctor(settings(redis_url), only=["proposals", "stream"])
    stream = check(report, "stream")
    assert stream.status == "WARN"
    assert "does not exist although proposals exist" in stream.message

    old_ms = int((time.time() - 1000) * 1000)
    for i in range(3):
        await client.xadd(
            KEYS.stream, {"event": "publish", "symbol": "BTCUSDT"}, id=f"{old_ms}-{i}"
        )
    report = await run_doctor(settings(redis_url), only=["proposals", "stream"])
    stream = check(report, "stream")
    assert stream.status == "WARN"
    assert "3 entries" in stream.message
    assert "last entry 17 min ago (publish BTCUSDT)" in stream.message
    assert "nothing appended for over" in stream.message
    assert stream.details["length"] == 3
    assert 999 <= stream.details["last_entry_age_sec"] <= 1010

    await client.xadd(KEYS.stream, {"event": "retract", "symbol": "BTCUSDT", "reason": "flat"})
    report = await run_doctor(settings(redis_url), only=["proposals", "stream"])
    stream = check(report, "stream")
    assert stream.status == "PASS"
    assert "4 entries" in stream.message and "(retract BTCUSDT)" in stream.message

    # far longer than STREAM_MAXLEN: someone appends without trimming
    async with client.pipeline(transaction=False) as pipe:
        for _ in range(1015):
            pipe.xadd(KEYS.stream, {"event": "publish", "symbol": "X"})
        await pipe.execute()
    report = await run_doctor(settings(redis_url, STREAM_MAXLEN="4"), only=["stream"])
    assert check(report, "stream").status == "WARN"
    assert "longer than STREAM_MAXLEN" in check(report, "stream").message


async def test_stream_of_the_wrong_type_fails_and_disabled_passes(
    redis_url: str, client: aioredis.Redis
) -> None:
    await client.hset(KEYS.stream, mapping={"oops": "1"})
    report = await run_doctor(settings(redis_url), only=["stream"])
    stream = check(report, "stream")
    assert stream.status == "FAIL"
    assert "is a hash, not a stream" in stream.message
    report = await run_doctor(settings(redis_url, ENABLE_STREAM="false"), only=["stream"])
    assert check(report, "stream").status == "PASS"
    assert "disabled" in check(report, "stream").message


def test_unknown_check_name_is_a_usage_error() -> None:
    proc = run_cli("--only", "redis,bogus", "--redis-url", "redis://127.0.0.1:1/0")
    assert proc.returncode == 2
    assert "unknown check bogus" in proc.stderr


async def test_no_proposals_because_every_input_is_bad_is_not_a_publisher_problem(
    redis_url: str, client: aioredis.Redis
) -> None:
    await put_inputs(client, "BTCUSDT", market_age=1000)
    await put_inputs(client, "ETHUSDT")
    await client.hset(KEYS.marketstate("ETHUSDT"), "sigma", "n/a")
    report = await run_doctor(settings(redis_url), only=["inputs", "proposals"])
    assert check(report, "inputs").status == "FAIL"
    props = check(report, "proposals")
    assert props.status == "PASS", props.message
    assert "none of the 2 symbols with a position has usable inputs" in props.message
    assert "same Redis database" not in props.action + props.message

    # one usable position and still no proposal: that is the publisher's business
    await put_inputs(client, "ETHUSDT")
    report = await run_doctor(settings(redis_url), only=["inputs", "proposals"])
    props = check(report, "proposals")
    assert props.status == "WARN"
    assert "although 1 symbols have a position with usable inputs" in props.message
    assert "same Redis database" in props.action
