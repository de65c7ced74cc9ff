"""Serving the metrics: the HTTP endpoint on METRICS_ADDR:METRICS_PORT, from a daemon
thread, and what `service.app.serve` does when METRICS_PORT is set."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.registry import Collector

from harvest_async.config import Settings
from harvest_async.core.ports import Observer, RunnerHooks
from harvest_async.errors import HarvestError
from harvest_async.service.fanout import combine
from harvest_async.service.metrics import Metrics

__all__ = ["MetricsServer", "serve_metrics", "start_for"]

log = logging.getLogger(__name__)


class MetricsServer:
    """The running endpoint: `port` (the bound one, useful with port 0) and `stop()`."""

    def __init__(self, registry: CollectorRegistry, port: int, addr: str) -> None:
        self._server, self._thread = start_http_server(port, addr=addr, registry=registry)
        bound = self._server.server_address
        self.addr: str = str(bound[0])  # what the socket is really bound to
        self.port: int = int(bound[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2.0)


def serve_metrics(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve `registry` on http://addr:port/metrics from a daemon thread.

    Raises OSError when the port cannot be bound.
    """
    return MetricsServer(registry, port, addr)


def start_for(
    settings: Settings,
    observer: Observer | None,
    hooks: RunnerHooks | None,
    collectors: Sequence[Collector] = (),
) -> tuple[Observer, RunnerHooks, Callable[[], None]]:
    """What `service.serve` does when METRICS_PORT is set: build the metrics, serve them on
    METRICS_ADDR (default 127.0.0.1), and return the observer/hooks to use plus the function
    that stops serving."""
    metrics = Metrics(
        symbol_cap=settings.metrics_symbol_cap,
        theta=settings.theta,
        floor_sec=settings.publish_interval_sec,
        heartbeat_sec=settings.max_publish_age_sec,
    )
    for collector in collectors:  # e.g. a publisher group's (service.group_metrics)
        metrics.registry.register(collector)
    port, addr = settings.metrics_port, settings.metrics_addr
    assert port is not None
    where = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
    try:
        server = serve_metrics(metrics.registry, port, addr)
    except OSError as exc:
        # exit 1 through cli.exits, as any HarvestError that is not a configuration error
        raise HarvestError(
            f"METRICS_PORT: cannot listen on {where}: {exc.strerror or exc}"
        ) from exc
    log.info("metrics on http://%s/metrics", where)
    obs, hks = combine(metrics, observer, hooks)
    return obs, hks, server.stop
