"""The startup ACL check on a real Redis Cluster (Redis 7, Valkey): every primary has an
ACL of its own (ACL SETUSER is not propagated), and every one is probed.

* the documented ACL with its cluster additions (docs/operations.md), set on every
  node, is enough: the service starts and publishes;
* a permission missing on every node, or on one primary only (not the URL's node),
  stops the start with one line naming what is missing (and the node), exit 2 (`run` as
  a subprocess for some, `serve` for the rest), and nothing is written;
* a permission missing on one replica only stops nothing: the start logs one warning
  naming the replica and what it lacks (a failover promoting it would stop the
  service); with the full ACL there is no such warning;
* a user that may run neither INFO nor CLUSTER SLOTS cannot tell the cluster from one
  server: the check's probes see MOVED replies and stop the start saying so.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from itertools import count
from typing import Any

import anyio
import pytest
from redis.asyncio.cluster import RedisCluster

from harvest_async.config import settings_from_env
from harvest_async.core.slots import key_slot
from harvest_async.errors import HarvestError
from harvest_async.service.app import serve
from harvest_async.tools.embedded_server import EmbeddedRedis, ServerBinary
from tests.integration.test_acl import INSTANCE, documented_acl, user_url
from tests.support.cluster import ClusterTopology, cluster_flavours
from tests.support.live import KEYS, SYM, put_inputs, running, service_env, wait_for

pytestmark = pytest.mark.slow

STREAM = "quantum:stream:marketstate"
# what a cluster needs beyond the documented ACL (docs/operations.md says the same)
CLUSTER_RULES = ["+cluster|slots", "+command"]
_users = count()


def cluster_acl() -> list[str]:
    """The documented ACL, its cluster additions and an input stream's reads."""
    return [*documented_acl(), *CLUSTER_RULES, "+xread", f"%R~{STREAM}"]


@pytest.fixture(
    scope="module", params=cluster_flavours() or [None], ids=lambda b: getattr(b, "id", "none")
)
def acl_cluster(request: pytest.FixtureRequest) -> Iterator[ClusterTopology]:
    """3 primaries with a replica each, shared by the module: each test has users of its
    own."""
    binary: ServerBinary | None = request.param
    if binary is None:
        pytest.skip("no redis-server >= 7.0 or valkey-server: Redis 6.2 cannot build a cluster")
    with ClusterTopology(binary, replicas=1) as topology:
        _until_replicas_listed(topology)
        yield topology


def _until_replicas_listed(topology: ClusterTopology, limit: float = 30.0) -> None:
    """CLUSTER SLOTS leaves out a replica that has no replication offset yet (seconds
    after it attached, or until its primary writes): a write to every primary, then wait
    until every node lists every replica, as the startup check reads them there."""
    for primary in topology.primaries():
        key = next(
            f"acl-fixture-{i}"
            for i in count()
            if topology.slot_owner(key_slot(f"acl-fixture-{i}")) is primary
        )
        primary.command("SET", key, "1")
    wanted = len(topology.servers) - len(topology.primaries())
    deadline = time.monotonic() + limit
    while True:
        listed = [
            sum(len(row) - 3 for row in s.command("CLUSTER", "SLOTS")) for s in topology.servers
        ]
        if all(n == wanted for n in listed):
            return
        assert time.monotonic() < deadline, f"replicas listed by each node: {listed}"
        time.sleep(0.1)


@asynccontextmanager
async def admin_of(topology: ClusterTopology) -> AsyncIterator[Any]:
    client = RedisCluster.from_url(topology.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


def set_user(
    topology: ClusterTopology,
    rules: list[str],
    *,
    on_one: list[str] | None = None,
    odd: EmbeddedRedis | None = None,
) -> str:
    """A user with `rules` on every node, or `on_one`'s rules on `odd` (by default the
    last primary, not the node of the URL)."""
    name = f"harvest{next(_users)}"
    odd = odd or topology.primaries()[-1]
    assert topology.url != f"redis://127.0.0.1:{topology.port_of(odd)}/0"
    for server in topology.servers:
        given = on_one if on_one is not None and server is odd else rules
        server.command("ACL", "SETUSER", name, "reset", *given)
    return name


def env_for(url: str) -> dict[str, str]:
    return service_env(url, SYMBOLS="*", INSTANCE=INSTANCE, INPUT_STREAMS=STREAM)


def without(rules: list[str], rule: str, replacement: str | None = None) -> list[str]:
    assert rule in rules, rule
    i = rules.index(rule)
    return rules[:i] + ([replacement] if replacement else []) + rules[i + 1 :]


async def nothing_written(admin: Any) -> bool:
    keys = (KEYS.proposal(SYM), KEYS.stream, KEYS.liveness(INSTANCE))
    return not any([await admin.exists(key) for key in keys])


async def test_the_cluster_acl_is_enough(acl_cluster: ClusterTopology) -> None:
    user = set_user(acl_cluster, cluster_acl())
    async with admin_of(acl_cluster) as admin:
        await put_inputs(admin, pnl=1.0)
        async with running(settings_from_env(env_for(user_url(acl_cluster.url, user)))):

            async def published() -> bool:
                shown = await admin.hget(KEYS.proposal(SYM), "position_unrealized_pnl")
                return bool(shown == repr(1.0))

            await wait_for(published, "the first publish")
        await admin.delete(KEYS.proposal(SYM), KEYS.stream, KEYS.liveness(INSTANCE))


_PROPOSALS = "~quantum:harvest:proposal:*"
# (the rule to drop, its replacement, on one primary only?, what the error names)
SWEEP: list[tuple[str, str | None, bool, str]] = [
    ("+command", None, True, "command command"),
    ("+cluster|slots", None, True, "command cluster|slots"),
    ("+hset", None, True, "command hset"),
    ("+xread", None, False, "command xread"),
    (_PROPOSALS, "%R" + _PROPOSALS, True, "write access to keys quantum:harvest:proposal:*"),
    (
        "&__keyspace@0__:quantum:state:positions:*",
        None,
        True,
        "channel pattern __keyspace@0__:quantum:state:positions:*",
    ),
]
IN_A_SUBPROCESS = {"+hset", "+xread"}


@pytest.mark.parametrize(
    ("rule", "replacement", "one", "named"),
    SWEEP,
    ids=[f"{r}{'@one' if o else '@all'}" for r, _, o, _ in SWEEP],
)
async def test_a_missing_permission_stops_the_start(
    acl_cluster: ClusterTopology, rule: str, replacement: str | None, one: bool, named: str
) -> None:
    rules = cluster_acl()
    lacking = without(rules, rule, replacement)
    user = set_user(acl_cluster, rules if one else lacking, on_one=lacking if one else None)
    url = user_url(acl_cluster.url, user)
    async with admin_of(acl_cluster) as admin:
        await put_inputs(admin)  # something to publish, were it to start
        line = await (_run_cli(url) if rule in IN_A_SUBPROCESS else _serve_refused(url))
        assert line.removeprefix("harvest-async: ").startswith(f"permission denied: {named}"), line
        if one:
            odd = acl_cluster.primaries()[-1]
            assert f"on the cluster node 127.0.0.1:{acl_cluster.port_of(odd)}" in line, line
        assert await nothing_written(admin)


_REPLICA_WARNING = "once a failover promotes it the service is refused there"


async def test_the_cluster_acl_is_enough_on_the_replicas(acl_cluster: ClusterTopology) -> None:
    user = set_user(acl_cluster, cluster_acl())
    async with admin_of(acl_cluster) as admin:
        await put_inputs(admin, pnl=1.0)
        stderr = await _run_once(user_url(acl_cluster.url, user))
        assert "replica" not in stderr and _REPLICA_WARNING not in stderr, stderr
        await admin.delete(KEYS.proposal(SYM), KEYS.stream, KEYS.liveness(INSTANCE))


async def test_a_replica_lacking_a_permission_is_a_warning(acl_cluster: ClusterTopology) -> None:
    """A replica serves nothing until promoted: what its ACL lacks is logged once, and the
    service starts (and publishes: the primaries have everything)."""
    rules = cluster_acl()
    lacking = without(without(rules, "+hset"), _PROPOSALS, "%R" + _PROPOSALS)
    replica = acl_cluster.replica_of(acl_cluster.primaries()[-1])
    user = set_user(acl_cluster, rules, on_one=lacking, odd=replica)
    async with admin_of(acl_cluster) as admin:
        await put_inputs(admin, pnl=2.0)
        stderr = await _run_once(user_url(acl_cluster.url, user))
        (line,) = [x for x in stderr.splitlines() if " WARNING " in x]
        where = f"127.0.0.1:{acl_cluster.port_of(replica)}"
        # every refusal, not the first: the key pattern (DEL), HSET, the write script's keys
        lacks = (
            f"startup ACL check: replica {where} lacks: write access to keys "
            "quantum:harvest:proposal:*, command hset, the proposal write script on "
        )
        assert lacks in line and line.count(" replica ") == 1, line
        assert line.endswith(f"— {_REPLICA_WARNING} (ACL users are per node)"), line
        assert await admin.hget(KEYS.proposal(SYM), "position_unrealized_pnl") == repr(2.0)
        await admin.delete(KEYS.proposal(SYM), KEYS.stream, KEYS.liveness(INSTANCE))


async def test_a_user_that_cannot_tell_a_cluster_is_stopped(acl_cluster: ClusterTopology) -> None:
    """Without INFO (the documented ACL has none) and CLUSTER SLOTS the cluster looks like
    one server; the probes' MOVED replies give it away: exit 2, saying what to grant."""
    user = set_user(acl_cluster, without(cluster_acl(), "+cluster|slots"))
    async with admin_of(acl_cluster) as admin:
        line = await _run_cli(user_url(acl_cluster.url, user))
        assert "REDIS_CLUSTER" in line and "is a Redis Cluster node" in line, line
        assert "+cluster|slots" in line, line
        assert await nothing_written(admin)


async def test_a_cluster_said_to_be_one_server_is_stopped(acl_cluster: ClusterTopology) -> None:
    """REDIS_CLUSTER=false on a cluster node: the probes' MOVED replies stop the start."""
    async with admin_of(acl_cluster) as admin:
        line = await _run_cli(acl_cluster.url, REDIS_CLUSTER="false")
        assert "REDIS_CLUSTER" in line and "set REDIS_CLUSTER=auto or true" in line, line
        assert await nothing_written(admin)


async def _run_cli(url: str, **extra: str) -> str:
    """`harvest-async run` as a subprocess: exit 2 and one line on stderr, returned."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THETA_")}
    env.update(env_for(url), **extra)
    result = await anyio.run_process(
        [sys.executable, "-m", "harvest_async", "run"], env=env, check=False
    )
    stderr = result.stderr.decode().strip()
    assert result.returncode == 2, stderr
    # one line says why; before it, only the start's INFO log line (the cluster's nodes)
    *logged, line = stderr.splitlines()
    assert all(" INFO " in earlier for earlier in logged), stderr
    return line


async def _run_once(url: str) -> str:
    """`harvest-async run --once` as a subprocess: exit 0; its stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THETA_")}
    env.update(env_for(url))
    result = await anyio.run_process(
        [sys.executable, "-m", "harvest_async", "run", "--once"], env=env, check=False
    )
    stderr = result.stderr.decode().strip()
    assert result.returncode == 0, stderr
    return stderr


async def _serve_refused(url: str) -> str:
    with pytest.raises(HarvestError) as info:
        with anyio.fail_after(15):
            await serve(settings_from_env(env_for(url)), handle_signals=False)
    return str(info.value)
