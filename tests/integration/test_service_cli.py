"""`harvest-async run` and `simulate` as real processes (`python -m harvest_async ...`):
exit codes, `--once`, SIGTERM, the original service's env file, and the simulator feeding
the service until every symbol's proposal matches its inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest
import redis

from harvest_async import __version__
from harvest_async.core.input_hashes import NoAdvice, SymbolInputs, trim
from harvest_async.core.inputs import evaluate
from harvest_async.core.kernel import KernelInputError, compute
from harvest_async.core.keys import Keys
from harvest_async.core.models import Theta
from harvest_async.core.proposal import theta_id_for
from harvest_async.tools.embedded_server import EmbeddedRedis

KEYS = Keys()

ORIGINAL_ENV_FILE = """\
SYMBOLS=BTCUSDT,ETHUSDT,SOLUSDT
PUBLISH_INTERVAL_SEC=10
REDIS_HOST=127.0.0.1
REDIS_PORT=6379
REDIS_DB=0
POSITION_SOURCE=auto
ENABLE_STREAM=false
FALLBACK_STOP_PCT=0.02
MAX_PUBLISH_AGE_SEC=60
CHANGE_EPS_PCT=0.001
MARKETSTATE_PREFIX=quantum:marketstate:
RISKPROPOSAL_PREFIX=quantum:risk:proposal:
POSITION_PREFIX=quantum:state:positions:
HARVEST_PREFIX=quantum:harvest:proposal:
STREAM_NAME=quantum:stream:harvest.proposal
LOG_LEVEL=INFO
"""


def clean_env(**extra: str) -> dict[str, str]:
    """No inherited configuration: only what the test passes."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 20.0) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "harvest_async", *args],
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def service(
    *args: str, env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], Callable[[], str]]]:
    """`run` in the background; yields the process and a function returning its log."""
    log_path = tmp_path / f"service-{time.monotonic_ns()}.log"
    log: IO[str] = open(log_path, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "harvest_async", "run", *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield proc, log_path.read_text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def wait_until(probe: Callable[[], Any], what: str, limit: float = 5.0) -> Any:
    deadline = time.perf_counter() + limit
    while True:
        value = probe()
        if value:
            return value
        if time.perf_counter() > deadline:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        time.sleep(0.005)


def now() -> float:
    return time.time()


def put_inputs(client: redis.Redis, symbol: str, pnl: float, keys: Keys = KEYS) -> None:
    """LONG 1 @ 100, stop 2 %: pnl 0 -> NONE, 5 -> PARTIAL_25, 9 -> _50, 13 -> _75."""
    pipe = client.pipeline(transaction=True)
    for key in (keys.marketstate(symbol), keys.risk(symbol), keys.position(symbol)):
        pipe.delete(key)
    pipe.hset(
        keys.marketstate(symbol),
        mapping={
            "sigma": "0.005",
            "ts": "0.5",
            "p_trend": "0.6",
            "p_mr": "0.2",
            "p_chop": "0.2",
            "ts_timestamp": str(int(now())),
        },
    )
    pipe.hset(keys.risk(symbol), mapping={"stop_dist_pct": "0.02"})
    pipe.hset(
        keys.position(symbol),
        mapping={
            "symbol": symbol,
            "side": "LONG",
            "quantity": "1.0",
            "entry_price": "100.0",
            "unrealized_pnl": repr(float(pnl)),
            "created_at": str(int(now())),
            "ts_epoch": repr(now()),
        },
    )
    pipe.execute()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    yield c
    c.close()


# -- tests ------------------------------------------------------------------------------


def test_once_publishes_and_exits_0(redis_url: str, client: redis.Redis) -> None:
    put_inputs(client, "BTCUSDT", 5.0)
    put_inputs(client, "ETHUSDT", 13.0)
    client.hset(KEYS.position("SOLUSDT"), mapping={"side": "FLAT", "quantity": "0"})
    result = cli("run", "--once", "--redis-url", redis_url, "--symbols", "BTCUSDT,ETHUSDT,SOLUSDT")
    assert result.returncode == 0, result.stderr
    assert client.hget(KEYS.proposal("BTCUSDT"), "harvest_action") == "PARTIAL_25"
    assert client.hget(KEYS.proposal("ETHUSDT"), "harvest_action") == "PARTIAL_75"
    assert not client.exists(KEYS.proposal("SOLUSDT"))
    entries = client.xrange(KEYS.stream)
    assert [(f["event"], f["symbol"]) for _id, f in entries] == [
        ("publish", "BTCUSDT"),
        ("publish", "ETHUSDT"),
    ]
    assert {f["trigger"] for _id, f in entries} == {"startup"}
    # a second pass adopts what the first wrote: no new audit entries
    again = cli("run", "--once", "--redis-url", redis_url, "--symbols", "BTCUSDT,ETHUSDT")
    assert again.returncode == 0, again.stderr
    assert client.xlen(KEYS.stream) == 2


def test_json_logs_carry_the_decisions_fields(redis_url: str, client: redis.Redis) -> None:
    put_inputs(client, "BTCUSDT", 5.0)
    env = clean_env(REDIS_URL=redis_url, LOG_FORMAT="json", INSTANCE="vps-7", SYMBOLS="BTCUSDT")
    result = cli("run", "--once", env=env)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert {line["instance"] for line in lines} == {"vps-7"}
    (publish,) = [line for line in lines if line.get("event") == "publish"]
    published = client.hgetall(KEYS.proposal("BTCUSDT"))
    assert publish["symbol"] == "BTCUSDT"
    assert publish["action"] == "PARTIAL_25" and publish["trigger"] == "startup"
    assert publish["plan_id"] == published["plan_id"]
    assert str(publish["seq"]) == published["seq"]
    assert repr(publish["R_net"]) == published["R_net"]
    assert repr(publish["kill_score"]) == published["kill_score"]


def test_under_systemd_log_lines_carry_their_syslog_priority(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    put_inputs(client, "BTCUSDT", 5.0)
    journal = tmp_path / "journal"
    with journal.open("w") as stderr:
        found = os.fstat(stderr.fileno())
        env = clean_env(
            REDIS_URL=redis_url,
            SYMBOLS="BTCUSDT",
            JOURNAL_STREAM=f"{found.st_dev}:{found.st_ino}",  # what systemd sets
        )
        done = subprocess.run(
            [sys.executable, "-m", "harvest_async", "run", "--once"],
            env=env,
            stderr=stderr,
            timeout=20,
            check=False,
        )
    assert done.returncode == 0
    lines = journal.read_text().splitlines()
    assert any("publish BTCUSDT" in line for line in lines), lines
    assert all(line.startswith("<6>INFO    harvest_async.") for line in lines), lines


def test_once_honours_prefixes_and_stream_name(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    keys = Keys(
        marketstate_prefix="t:ms:",
        risk_prefix="t:risk:",
        position_prefix="t:pos:",
        harvest_prefix="t:out:",
        stream="t:audit",
    )
    put_inputs(client, "BTCUSDT", 9.0, keys)
    env_file = tmp_path / "prefixes.env"
    env_file.write_text(
        f"REDIS_URL={redis_url}\nSYMBOLS=*\nMARKETSTATE_PREFIX=t:ms:\n"
        "RISKPROPOSAL_PREFIX=t:risk:\nPOSITION_PREFIX=t:pos:\nHARVEST_PREFIX=t:out:\n"
        "STREAM_NAME=t:audit\n"
    )
    result = cli("run", "--once", "--env-file", str(env_file))
    assert result.returncode == 0, result.stderr
    assert client.hget("t:out:BTCUSDT", "harvest_action") == "PARTIAL_50"
    assert client.xlen("t:audit") == 1
    assert not client.exists(KEYS.proposal("BTCUSDT"), KEYS.stream)


def test_original_env_file_starts_it_unchanged(
    redis_server_factory: Callable[..., EmbeddedRedis], tmp_path: Path
) -> None:
    """The original service's file: REDIS_HOST/REDIS_PORT/REDIS_DB, no REDIS_URL."""
    server = redis_server_factory(port=0)
    assert server.port is not None
    env_file = tmp_path / "harvest.env"
    env_file.write_text(ORIGINAL_ENV_FILE.replace("REDIS_PORT=6379", f"REDIS_PORT={server.port}"))
    client = redis.Redis(host="127.0.0.1", port=server.port, decode_responses=True)
    put_inputs(client, "BTCUSDT", 5.0)
    put_inputs(client, "ETHUSDT", 0.0)
    env = clean_env(INSTANCE="envfile")
    with service("--env-file", str(env_file), env=env, tmp_path=tmp_path) as (proc, log):
        wait_until(lambda: client.exists(KEYS.proposal("BTCUSDT")), "BTCUSDT's proposal")
        wait_until(lambda: client.exists(KEYS.proposal("ETHUSDT")), "ETHUSDT's proposal")
        btc = client.hgetall(KEYS.proposal("BTCUSDT"))
        assert btc["harvest_action"] == "PARTIAL_25"
        assert btc["position_source"] == "redis_hash"  # POSITION_SOURCE=auto: never synthetic
        # retractions bypass the 10 s floor
        client.hset(KEYS.position("ETHUSDT"), mapping={"side": "FLAT", "quantity": "0"})
        wait_until(lambda: not client.exists(KEYS.proposal("ETHUSDT")), "the retraction", 2.0)
        assert not client.exists(KEYS.proposal("SOLUSDT"))  # no inputs, no proposal
        # the startup pass publishes before the first liveness refresh: wait for it
        wait_until(lambda: client.exists(KEYS.liveness("envfile")), "the liveness key")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, log()
    assert not client.exists(KEYS.stream)  # ENABLE_STREAM=false
    assert not client.exists(KEYS.liveness("envfile"))
    text = log()
    assert "floor=10s heartbeat=60s stream=off" in text
    assert f"redis=redis://127.0.0.1:{server.port}/0" in text
    assert "Traceback" not in text
    client.close()


def test_once_connects_through_redis_host_port_db(
    redis_server_factory: Callable[..., EmbeddedRedis],
) -> None:
    """REDIS_HOST/REDIS_PORT/REDIS_DB without REDIS_URL: that server, that database."""
    server = redis_server_factory(port=0)
    assert server.port is not None
    db2 = redis.Redis(host="127.0.0.1", port=server.port, db=2, decode_responses=True)
    db0 = redis.Redis(host="127.0.0.1", port=server.port, db=0, decode_responses=True)
    try:
        put_inputs(db2, "BTCUSDT", 5.0)
        env = clean_env(REDIS_HOST="127.0.0.1", REDIS_PORT=str(server.port), REDIS_DB="2")
        result = cli("run", "--once", env=env)
        assert result.returncode == 0, result.stderr
        assert db2.hget(KEYS.proposal("BTCUSDT"), "harvest_action") == "PARTIAL_25"
        assert db0.keys("*") == []
        # given with a REDIS_URL that says otherwise: exit 2 naming both
        env["REDIS_URL"] = f"redis://127.0.0.1:{server.port}/0"
        clash = cli("run", "--once", env=env)
        assert clash.returncode == 2
        (line,) = clash.stderr.strip().splitlines()
        assert "REDIS_URL" in line and "REDIS_DB" in line
    finally:
        db0.close()
        db2.close()


def test_live_change_then_sigterm_exits_0_promptly(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    put_inputs(client, "BTCUSDT", 0.0)
    env = clean_env(
        REDIS_URL=redis_url, SYMBOLS="BTCUSDT", PUBLISH_INTERVAL_SEC="0", INSTANCE="sigterm"
    )
    with service(env=env, tmp_path=tmp_path) as (proc, log):
        wait_until(lambda: client.exists(KEYS.liveness("sigterm")), "the service to be ready")
        assert client.hget(KEYS.proposal("BTCUSDT"), "harvest_action") == "NONE"
        latencies = []
        for pnl, action in ((9.0, "PARTIAL_50"), (13.0, "PARTIAL_75"), (5.0, "PARTIAL_25")):
            sent = time.perf_counter()
            client.hset(KEYS.position("BTCUSDT"), "unrealized_pnl", repr(pnl))
            wait_until(
                lambda action=action: (
                    client.hget(KEYS.proposal("BTCUSDT"), "harvest_action") == action
                ),
                action,
                2.0,
            )
            latencies.append(time.perf_counter() - sent)
        assert sorted(latencies)[1] < 0.1, latencies
        stopping = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, log()
        assert time.perf_counter() - stopping < 3.0
    assert "SIGTERM received" in log()
    # the startup line says what runs where; the last one what it finished
    (started,) = [line for line in log().splitlines() if " running: " in line]
    assert f"harvest-async {__version__} running: instance=sigterm theta_id=" in started
    assert f"theta_id={theta_id_for(Theta())} symbols=1 listed (BTCUSDT)" in started
    assert f"redis={redis_url}" in started
    last = log().strip().splitlines()[-1]
    assert "stopped after 4 writes (1 symbols tracked); liveness key deleted" in last


@pytest.mark.parametrize("url", ["unix:///nonexistent/redis.sock", "redis://127.0.0.1:1/0"])
@pytest.mark.parametrize("once", [True, False])
def test_redis_unreachable_exits_3_with_one_line(url: str, once: bool) -> None:
    # `run` waits for Redis (REDIS_STARTUP_TIMEOUT_SEC; its outage WARNING comes first),
    # `--once` does not
    env = clean_env() if once else clean_env(REDIS_STARTUP_TIMEOUT_SEC="0.5")
    result = cli("run", *(["--once"] if once else []), "--redis-url", url, env=env)
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == (1 if once else 2), result.stderr
    assert lines[-1].startswith("harvest-async: cannot reach Redis at ")
    assert url.split("://")[1].rsplit("/", 1)[0] in lines[-1]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PUBLISH_INTERVAL_SEC", "abc"),
        ("MAX_PUBLISH_AGE_SEC", "-1"),
        ("POSITION_SOURCE", "bogus"),
        ("ENABLE_STREAM", "maybe"),
        ("REDIS_URL", "http://localhost"),
        ("THETA_KILL_THRESHOLD", "high"),
        ("THETA_NOT_A_TUNABLE", "1"),
        ("STREAM_MAXLEN", "0"),
        ("MAX_CLOCK_SKEW_SEC", "-1"),
        ("MAX_CLOCK_SKEW_SEC", "nan"),
    ],
)
def test_bad_configuration_exits_2_naming_the_variable(variable: str, value: str) -> None:
    result = cli("run", "--once", env=clean_env(**{variable: value}))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0] or (variable.startswith("THETA_") and "THETA" in lines[0])


def test_bad_theta_file_exits_2(tmp_path: Path) -> None:
    theta = tmp_path / "theta.toml"
    theta.write_text("kill_threshold = 'high'\n")
    result = cli("run", "--once", env=clean_env(THETA_FILE=str(theta)))
    assert result.returncode == 2
    assert "THETA_FILE" in result.stderr


def _expected_action(client: redis.Redis, symbol: str, keys: Keys) -> str | None:
    raw = [client.hgetall(k) for k in (keys.marketstate(symbol), keys.risk(symbol))]
    raw.append(client.hgetall(keys.position(symbol)))
    inputs = SymbolInputs(
        symbol, trim("marketstate", raw[0]), trim("risk", raw[1]), trim("position", raw[2])
    )
    ready = evaluate(inputs, now(), theta=Theta(), max_input_age_sec=300.0)
    if isinstance(ready, NoAdvice):
        return None
    try:
        return compute(ready.position, ready.market, ready.risk, Theta()).harvest_action
    except KernelInputError:
        return None


def test_simulator_feeds_the_service_until_every_proposal_matches(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    keys = Keys(
        marketstate_prefix="sim:ms:",
        risk_prefix="sim:risk:",
        position_prefix="sim:pos:",
        harvest_prefix="sim:out:",
        stream="sim:audit",
    )
    prefixes = {
        "MARKETSTATE_PREFIX": keys.marketstate_prefix,
        "RISKPROPOSAL_PREFIX": keys.risk_prefix,
        "POSITION_PREFIX": keys.position_prefix,
        "HARVEST_PREFIX": keys.harvest_prefix,
        "STREAM_NAME": keys.stream,
    }
    env = clean_env(
        REDIS_URL=redis_url, SYMBOLS="*", PUBLISH_INTERVAL_SEC="0", INSTANCE="sim", **prefixes
    )
    with service(env=env, tmp_path=tmp_path) as (proc, log):
        wait_until(lambda: client.exists(KEYS.liveness("sim")), "the service to be ready")
        result = cli(
            "simulate", "--symbol-count", "30", "--rate", "400", "--duration", "1.5", "--seed", "7",
            env=clean_env(REDIS_URL=redis_url, **prefixes),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "wrote" in result.stdout
        symbols = sorted(
            key.removeprefix(keys.marketstate_prefix)
            for key in client.scan_iter(match=f"{keys.marketstate_prefix}*")
        )
        assert len(symbols) == 30

        def converged() -> bool:
            for symbol in symbols:
                action = client.hget(keys.proposal(symbol), "harvest_action")
                if action != _expected_action(client, symbol, keys):
                    return False
            return True

        wait_until(converged, "every proposal to match its inputs", 5.0)
        assert proc.poll() is None, log()
        published = {
            f["harvest_action"] for _id, f in client.xrange(keys.stream) if f["event"] == "publish"
        }
        reasons = {
            f["reason"].split(":")[0]
            for _id, f in client.xrange(keys.stream)
            if f["event"] == "retract"
        }
        assert client.ttl(keys.marketstate(symbols[0])) > 500  # producers' TTLs
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, log()
    assert len(published) >= 3, published
    assert reasons & {"flat", "no_position"}, reasons
    assert "Traceback" not in log()


@pytest.mark.parametrize(
    "args",
    [
        ["--rate", "0"],
        ["--duration", "-1"],
        ["--symbol-count", "0"],
        ["--symbol-count", "3", "--symbols", "BTCUSDT"],
    ],
)
def test_simulate_bad_arguments_exit_2(args: list[str]) -> None:
    result = cli("simulate", *args)
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_simulate_redis_unreachable_exits_3_with_one_line() -> None:
    result = cli("simulate", "--redis-url", "unix:///nonexistent/redis.sock", "--duration", "1")
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("harvest-async: cannot reach Redis at unix:///nonexistent")
