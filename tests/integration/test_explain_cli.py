"""`harvest-async explain SYMBOL` against a real server, next to the real service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from harvest_async.core.keys import Keys

KEYS = Keys()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    return subprocess.run(
        [sys.executable, "-m", "harvest_async", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def explain(redis_url: str, symbol: str = "BTCUSDT") -> dict[str, Any]:
    done = cli("explain", symbol, "--redis-url", redis_url, "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    now = time.time()
    c.hset(
        KEYS.marketstate("BTCUSDT"),
        mapping={"sigma": "0.01", "ts": "0.35", "p_trend": "0.5", "p_mr": "0.2", "p_chop": "0.3",
                 "ts_timestamp": str(int(now))},
    )  # fmt: skip
    c.hset(KEYS.risk("BTCUSDT"), mapping={"stop_dist_pct": "0.02"})
    c.hset(
        KEYS.position("BTCUSDT"),
        mapping={"side": "LONG", "entry_price": "100", "unrealized_pnl": "5", "quantity": "1",
                 "age_sec": "3600", "ts_epoch": repr(now)},
    )  # fmt: skip
    yield c
    c.close()


def test_explain_follows_the_service_decisions(redis_url: str, client: redis.Redis) -> None:
    before = explain(redis_url)
    assert before["verdict"]["action"] == "publish"
    assert before["decision"]["harvest_action"] == "PARTIAL_25"
    assert before["published"] is None
    assert any("no live publisher" in note for note in before["notes"])

    done = cli("run", "--once", "--redis-url", redis_url)
    assert done.returncode == 0, done.stderr
    # a live publisher's liveness key, as the service writes it
    client.hset(KEYS.liveness("vps-1"), mapping={"instance": "vps-1", "pid": "7", "host": "vps",
                                                 "last_beat_epoch": repr(time.time())})  # fmt: skip
    client.expire(KEYS.liveness("vps-1"), 30)
    after = explain(redis_url)
    assert after["verdict"]["action"] == "nothing"  # what --once published still holds
    assert after["published"]["harvest_action"] == "PARTIAL_25"
    assert after["verdict"]["next_deadline"] == pytest.approx(
        after["published"]["ts_epoch"] + 60, abs=1e-3
    )
    assert [p["instance"] for p in after["publishers"]] == ["vps-1"]
    assert after["notes"] == []

    client.hset(KEYS.position("BTCUSDT"), "unrealized_pnl", "9")
    moved = explain(redis_url)
    assert (moved["verdict"]["action"], moved["verdict"]["rule"]) == ("wait", "floor")
    assert "PARTIAL_25 -> PARTIAL_50" in moved["verdict"]["detail"]

    client.hset(KEYS.marketstate("BTCUSDT"), "p_trend", "1.5")
    bad = explain(redis_url)
    assert bad["verdict"]["action"] == "retract"
    assert "invalid_marketstate: p_trend is outside [0, 1] (1.5)" in bad["verdict"]["detail"]
    # what the service then really does
    done = cli("run", "--once", "--redis-url", redis_url)
    assert done.returncode == 0, done.stderr
    *_, (_id, last) = client.xrange(KEYS.stream)
    assert last["event"] == "retract"
    assert last["reason"] == "invalid_marketstate: p_trend is outside [0, 1] (1.5)"


def test_explain_text(redis_url: str, client: redis.Redis) -> None:
    done = cli("explain", "BTCUSDT", "--redis-url", redis_url)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("BTCUSDT at ")
    assert lines[1] == "decision: PUBLISH (no proposal)"
    assert "  ladder: T1_R 2 <= R_net < T2_R 4 -> PARTIAL_25" in lines


def test_explain_without_redis_exits_3() -> None:
    done = cli("explain", "BTCUSDT", "--redis-url", "redis://127.0.0.1:1/0")
    assert done.returncode == 3
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("harvest-async: cannot reach Redis at redis://127.0.0.1:1/0")
