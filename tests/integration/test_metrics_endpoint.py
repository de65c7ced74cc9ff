"""The service with METRICS_PORT serves every listed metric on 127.0.0.1 (and only there),
with values that follow what it did; the endpoint goes away when the service stops."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import anyio
import pytest
import redis.asyncio as aioredis

from harvest_async.config import settings_from_env
from harvest_async.core.keys import Keys
from harvest_async.errors import HarvestError
from harvest_async.service.app import serve
from harvest_async.service.metrics import METRIC_NAMES
from harvest_async.service.runner import Runner
from harvest_async.tools.simulate import Simulator

KEYS = Keys()
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scrape(port: int, host: str = "127.0.0.1") -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        body: bytes = resp.read()
        return body.decode()


def sample(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample starting with {line_start!r}")


def served_a_change(text: str) -> bool:
    return (
        "harvest_event_to_publish_latency_seconds_count 0.0" not in text
        and "harvest_input_events_total{" in text
    )


async def write_inputs(client: aioredis.Redis, now: float) -> None:
    sim = Simulator(SYMBOLS, seed=3, start=now, open_fraction=1.0)
    async with client.pipeline(transaction=True) as pipe:
        for w in sim.initial():
            key = {"marketstate": KEYS.marketstate, "risk": KEYS.risk, "position": KEYS.position}[
                w.kind
            ](w.symbol)
            pipe.hset(key, mapping=w.fields)  # type: ignore[arg-type]
        await pipe.execute()


async def test_metrics_endpoint_serves_every_listed_metric(redis_url: str) -> None:
    port = free_port()
    settings = settings_from_env(
        {
            "REDIS_URL": redis_url,
            "METRICS_PORT": str(port),
            "METRICS_SYMBOL_CAP": "3",
            "PUBLISH_INTERVAL_SEC": "0",
            "MAX_PUBLISH_AGE_SEC": "60",
            "INSTANCE": "metrics-test",
        }
    )
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    ready = anyio.Event()

    async def on_ready(_runner: Runner) -> None:
        ready.set()

    try:
        await write_inputs(client, time.time())
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve(settings, on_ready=on_ready, handle_signals=False))
            with anyio.fail_after(10):
                await ready.wait()
            # a change after startup: an input event and an event-to-publish latency
            await client.hset(KEYS.marketstate("BTCUSDT"), "p_trend", "0.05")
            await client.hset(KEYS.marketstate("BTCUSDT"), "p_chop", "0.6")
            with anyio.fail_after(10):
                text = await anyio.to_thread.run_sync(scrape, port)
                while not served_a_change(text):
                    await anyio.sleep(0.05)
                    text = await anyio.to_thread.run_sync(scrape, port)
            tg.cancel_scope.cancel()
    finally:
        await client.aclose()

    missing = [name for name in METRIC_NAMES if f"# TYPE {name} " not in text]
    assert not missing, f"not served: {missing}"
    for family in ("process_start_time_seconds", "process_resident_memory_bytes", "python_info"):
        assert family in text
    # values follow what the service did
    assert sample(text, 'harvest_publishes_total{action="') >= 1
    assert sample(text, 'harvest_input_events_total{kind="marketstate"}') >= 1
    assert sample(text, 'harvest_resyncs_total{reason="startup"}') == 1
    assert sample(text, "harvest_tracked_symbols ") == len(SYMBOLS)
    assert sample(text, "harvest_last_publish_timestamp_seconds ") > time.time() - 60
    assert sample(text, 'harvest_symbols{state="published"}') == len(SYMBOLS)
    assert sample(text, "harvest_kill_threshold ") == 0.6
    assert sample(text, 'harvest_kill_weight{component="age_penalty"}') == 0.3
    assert sample(text, "harvest_metrics_symbol_cap ") == 3
    # the symbol cap holds: 4 symbols published, per-symbol series for 3
    per_symbol = {
        line.split('symbol="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith("harvest_symbol_kill_score{")
    }
    assert len(per_symbol) == 3
    assert per_symbol < set(SYMBOLS)

    # the endpoint is gone once the service has stopped
    with pytest.raises(urllib.error.URLError):
        scrape(port)


def test_metrics_listen_on_loopback_only() -> None:
    """The endpoint's socket is bound to 127.0.0.1; other local addresses are refused."""
    from harvest_async.service.metrics import Metrics
    from harvest_async.service.metrics_server import serve_metrics

    server = serve_metrics(Metrics(process_metrics=False).registry, 0)
    try:
        assert server.addr == "127.0.0.1"
        assert "harvest_build_info" in scrape(server.port)
        others = {
            str(info[4][0])
            for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
            if not str(info[4][0]).startswith("127.")
        }
        for address in others:  # none on a host with loopback only
            with pytest.raises(OSError):
                socket.create_connection((address, server.port), timeout=2).close()
    finally:
        server.stop()


async def test_metrics_port_in_use_is_one_clear_error(redis_url: str) -> None:

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = settings_from_env({"REDIS_URL": redis_url, "METRICS_PORT": str(port)})
        with pytest.raises(HarvestError, match=f"METRICS_PORT: cannot listen on 127.0.0.1:{port}"):
            await serve(settings, handle_signals=False)


def test_metrics_addr_chooses_the_listening_address() -> None:
    """METRICS_ADDR (a container sets 0.0.0.0 so Prometheus can scrape it over the compose
    network) is where the endpoint listens; 127.0.0.2 is a loopback address of its own."""
    from harvest_async.service.metrics_server import start_for

    port = free_port()
    settings = settings_from_env({"METRICS_PORT": str(port), "METRICS_ADDR": "127.0.0.2"})
    assert settings.metrics_addr == "127.0.0.2"
    _observer, _hooks, stop = start_for(settings, None, None)
    try:
        assert "harvest_build_info" in scrape(port, "127.0.0.2")
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        stop()


@pytest.mark.parametrize("value", ["localhost", "0.0.0", "*", "127.0.0.1:9108"])
def test_metrics_addr_must_be_an_ip_address(value: str) -> None:
    from harvest_async.config import ConfigError

    with pytest.raises(ConfigError, match="METRICS_ADDR"):
        settings_from_env({"METRICS_ADDR": value})
    assert settings_from_env({}).metrics_addr == "127.0.0.1"
