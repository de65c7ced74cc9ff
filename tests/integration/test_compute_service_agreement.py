"""`harvest-async compute` and `harvest-async run` on the same bad inputs: compute's error
line is the service's retraction reason, word for word, for every class of bad input.

Each class gets its own symbol: a valid proposal is published first (`run --once`), the
inputs are replaced by the bad ones, a second `run --once` retracts the proposal, and the
retraction's reason (read from the audit stream) is compared with what `compute` says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from harvest_async.core.keys import Keys

KEYS = Keys()
NOW = time.time()

BASE: dict[str, Any] = {
    "position": {
        "side": "LONG",
        "entry_price": 100.0,
        "unrealized_pnl": 5.0,
        "quantity": 1.0,
        "age_sec": 3600.0,
    },
    "market_state": {"sigma": 0.01, "ts": 0.35, "p_trend": 0.5, "p_mr": 0.2, "p_chop": 0.3},
    "p1_proposal": {"stop_dist_pct": 0.02},
}

# (section, field, bad value); `...` removes the field
CLASSES: list[tuple[str, str, Any]] = [
    ("market_state", "sigma", ...),  # a required field missing
    ("position", "unrealized_pnl", "abc"),  # not a number
    ("market_state", "sigma", "nan"),  # not finite
    ("position", "entry_price", "inf"),
    ("market_state", "p_trend", 1.5),  # probability outside [0, 1]
    ("market_state", "sigma", -1.0),  # negative sigma
    ("market_state", "ts", -1.0),  # negative trend strength
    ("position", "entry_price", 0),  # entry_price <= 0
    ("position", "side", "BUY"),  # unknown side
    ("p1_proposal", "stop_dist_pct", -0.02),  # negative stop distance
    ("p1_proposal", "stop_dist_pct", "wide"),
    ("position", "side", "FLAT"),
    ("position", "quantity", 0),
    ("position", "ts_epoch", int(NOW) - 1000),  # stale snapshot
    ("market_state", "ts_timestamp", int(NOW) + 86400),  # ahead of the clock
    ("position", "entry_price", 1e-300),  # with PnL 1e300 below: R_net overflows
]


def symbol(i: int) -> str:
    return f"C{i:02d}USDT"


def bad_case(i: int) -> dict[str, Any]:
    section, field, value = CLASSES[i]
    case = json.loads(json.dumps(BASE))
    case["position"]["symbol"] = symbol(i)
    if value is ...:
        del case[section][field]
    else:
        case[section][field] = value
    if value == 1e-300:
        case["position"]["unrealized_pnl"] = 1e300
    return case


def as_hash(obj: dict[str, Any]) -> dict[str, str]:
    """As a producer writes it: text, floats as repr."""
    return {k: v if isinstance(v, str) else repr(v) if isinstance(v, float) else str(v)
            for k, v in obj.items()}  # fmt: skip


def write(client: redis.Redis, sym: str, case: dict[str, Any]) -> None:
    with client.pipeline(transaction=True) as pipe:
        for key, section in (
            (KEYS.marketstate(sym), "market_state"),
            (KEYS.risk(sym), "p1_proposal"),
            (KEYS.position(sym), "position"),
        ):
            pipe.delete(key)
            pipe.hset(key, mapping=as_hash(case[section]))  # type: ignore[arg-type]
        pipe.execute()


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    return subprocess.run(
        [sys.executable, "-m", "harvest_async", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    yield c
    c.close()


def without_seconds(text: str) -> str:
    """Time-based reasons name a number of seconds, which may tick between two runs."""
    return re.sub(r"\b\d+ s\b", "N s", text)


def test_compute_errors_are_the_service_retraction_reasons(
    redis_url: str, client: redis.Redis
) -> None:
    symbols = [symbol(i) for i in range(len(CLASSES))]
    for sym in symbols:
        write(client, sym, {**BASE, "position": {**BASE["position"], "symbol": sym}})
    first = cli("run", "--once", "--redis-url", redis_url, "--symbols", ",".join(symbols))
    assert first.returncode == 0, first.stderr
    assert all(client.exists(KEYS.proposal(s)) for s in symbols)

    cases = [bad_case(i) for i in range(len(CLASSES))]
    for sym, case in zip(symbols, cases, strict=True):
        write(client, sym, case)
    second = cli("run", "--once", "--redis-url", redis_url, "--symbols", ",".join(symbols))
    assert second.returncode == 0, second.stderr
    retracted = {
        fields["symbol"]: fields["reason"]
        for _id, fields in client.xrange(KEYS.stream)
        if fields["event"] == "retract"
    }
    assert sorted(retracted) == symbols  # the service retracted every one of them

    computed = cli("compute", "-", stdin="".join(json.dumps(c) + "\n" for c in cases))
    assert computed.returncode == 1
    lines = [json.loads(line) for line in computed.stdout.splitlines()]
    assert [line["index"] for line in lines] == list(range(len(CLASSES)))
    for line, sym in zip(lines, symbols, strict=True):
        assert line["symbol"] == sym
        assert without_seconds(line["error"]) == without_seconds(retracted[sym]), sym
