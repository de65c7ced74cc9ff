"""The startup ACL check: every command, key and channel a command needs is tried
harmlessly, so that a missing permission stops the start with one line naming it (exit 2)
instead of a traceback later, or writes that land without their transaction.

It needs no ACL DRYRUN (Redis 7+ and Valkey only, and an admin command the service's own
user should not have), so it works the same on Redis 6.2, 7.x and Valkey:

* reads (the input read script in its probe mode, HGETALL, SCAN, XREVRANGE) run on keys
  named like the real ones (`<prefix><first of SYMBOLS>`, or `<prefix>harvest-async-acl-probe`);
* writes are only queued: MULTI is sent alone (when it is refused nothing follows), then
  each write the service makes, then a command with a wrong number of arguments, so that
  EXEC aborts the transaction. Redis checks the ACL when it queues a command, so each
  queued reply says whether that write is permitted, and nothing is ever executed. The
  proposal write script's commands (XADD, DEL, HSET, PEXPIRE) are queued one by one, as
  Redis checks each of them inside the script too, and then the EVALSHA of the script on
  the real keys (the ACL checks a script's declared keys when it is called);
* channel patterns are subscribed to one at a time, on a connection closed afterwards.

Every probe runs on a wire connection (`wire.Wire`, RESP2), one command per round trip.

On a cluster the replicas are probed too (`replica_gaps`), all probes, every refusal
noted rather than the first raised: a replica lacking a permission stops nothing now (it
serves nothing until a failover promotes it), so the start logs one warning. The probes
mean the same there: Redis 6.2, 7.0 and Valkey 8 check the ACL before the cluster
redirection and the read-only check, so a replica answers a permitted keyed command (a
write, or a read on a connection without READONLY) with MOVED and a denied one with
NOPERM, in MULTI as outside (seen on 6.2.14, 7.0.15 and Valkey 8.1.8;
tests/integration/test_cluster_acl.py runs 7 and Valkey).

A permission lost while running (the ACL changed under us) is noticed where it is
refused: the affected work waits and is retried, logged once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Literal

from harvest_async.config import Settings
from harvest_async.core.keys import EPOCH_PREFIX, INPUT_KINDS, LEASE_PREFIX, glob_escape
from harvest_async.errors import (
    AuthenticationFailed,
    ConfigError,
    PermissionDenied,
    RedisReplyError,
    RedisUnavailable,
)
from harvest_async.redis_io.client import (
    denied_command,
    describe_url,
    endpoint_for,
    is_permission_error,
)
from harvest_async.redis_io.inputs_io import (
    READ_COMMANDS,
    READ_SCRIPT,
    READ_SHA,
    InputLimits,
    Mode,
    unknown_command,
)
from harvest_async.redis_io.sink import WRITE_SHA
from harvest_async.redis_io.wire import Endpoint, Reply, Wire, command

__all__ = ["PROBE_SYMBOL", "Role", "replica_gaps", "replica_warning", "verify_permissions"]

PROBE_SYMBOL = "harvest-async-acl-probe"
# replies only a cluster node gives (a key served by another node, the cluster down)
_CLUSTER_REPLIES = ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN")

# run: the service; once: `run --once` (no liveness, no subscription); record: `record`
Role = Literal["run", "once", "record"]


async def verify_permissions(
    settings: Settings,
    role: Role,
    *,
    instance: str | None = None,
    nodes: Sequence[Endpoint] | None = None,
) -> None:
    """Raise PermissionDenied naming the first thing `role` needs and may not do.

    On a cluster (`nodes`: its primaries) every node is probed in full: each has an ACL
    of its own, and the server checks a command's ACL before redirecting it (MOVED,
    CROSSSLOT), so a node refuses what its ACL lacks whichever node serves the key."""
    if nodes is None:
        probe = _Probe(endpoint_for(settings), describe_url(settings.redis_url))
        probe.forced_single = settings.redis_cluster == "false"
        await _verify(probe, settings, role, instance)
        return
    for node in nodes:
        where = f"{node.host}:{node.port}"
        await _verify(_Probe(node, where, node=where), settings, role, instance)


async def replica_gaps(
    settings: Settings, role: Role, replicas: Sequence[Endpoint], *, instance: str | None = None
) -> dict[str, str]:
    """{replica host:port: what is wrong there} for each replica whose ACL lacks something
    `role` needs ("lacks: command hset, ...") or that could not be checked; raises nothing
    but cancellation."""
    gaps: dict[str, str] = {}
    for node in replicas:
        where = f"{node.host}:{node.port}"
        probe = _Probe(node, where, node=where)
        probe.lacks = []
        try:
            await _verify(probe, settings, role, instance)
        except PermissionDenied as exc:  # in a handshake: CLIENT SETNAME
            probe.lacks.append(exc.what)
        except AuthenticationFailed:
            probe.lacks.append("the user (authentication failed)")
        except RedisUnavailable as exc:
            gaps[where] = f"could not be checked ({exc})"
            continue
        if probe.lacks:
            gaps[where] = "lacks: " + ", ".join(dict.fromkeys(probe.lacks))
    return gaps


def replica_warning(gaps: dict[str, str]) -> str:
    """The one warning line for `replica_gaps`' findings."""
    each = "; ".join(f"replica {where} {gap}" for where, gap in gaps.items())
    return (
        f"{each} — once a failover promotes it the service is refused there "
        "(ACL users are per node)"
    )


async def _verify(probe: _Probe, settings: Settings, role: Role, instance: str | None) -> None:
    async with probe.connected():
        if probe.node is not None:  # the slot map, and redis-py's cluster client
            await probe.check("command cluster|slots", "CLUSTER", "SLOTS")
            await probe.check("command command", "COMMAND")
        await _reads(probe, settings, "all" if role == "record" else "used", role)
        if role == "record":
            await _transaction(probe, [])  # the recorder reads in MULTI/EXEC
        else:
            await _transaction(probe, _writes(settings, role == "run", instance))
    if role != "once":
        recorder = role == "record"
        name = instance or (f"{settings.instance}-recorder" if recorder else settings.instance)
        keys = settings.keys
        patterns = [*keys.keyspace_patterns(), glob_escape(keys.liveness_channel(name))]
        async with probe.connected():
            await _channels(probe, patterns)
        await _input_streams(probe, settings.input_streams)


# -- steps ---------------------------------------------------------------------------------


async def _reads(probe: _Probe, settings: Settings, mode: Mode, role: Role) -> None:
    keys = settings.keys
    symbol = settings.symbols[0] if settings.symbols else PROBE_SYMBOL
    await probe.check("input read script", "SCRIPT", "LOAD", READ_SCRIPT)
    limits = InputLimits(settings.max_input_fields, settings.max_input_value_bytes)
    command = READ_COMMANDS[0]
    for kind in INPUT_KINDS:
        prefix = keys.input_prefixes()[kind]
        args = (READ_SHA, "1", prefix + symbol, *limits.args(kind, mode, probe=True))
        what = f"read access to keys {prefix}*"
        if unknown_command(await probe.check(what, command, *args)):
            command = READ_COMMANDS[-1]  # Redis 6.2: no EVALSHA_RO
            await probe.check(what, command, *args)
    if settings.symbols is None:
        prefixes = [keys.position_prefix, keys.harvest_prefix]
        if role == "record":
            prefixes = list(keys.input_prefixes().values())
        for prefix in prefixes:
            await probe.check("SCAN", "SCAN", "0", "MATCH", glob_escape(prefix) + "*", "COUNT", "1")
    if role != "record":
        await probe.check(
            f"read access to keys {keys.harvest_prefix}*", "HGETALL", keys.proposal(symbol)
        )


def _writes(
    settings: Settings, liveness: bool, instance: str | None
) -> list[tuple[str, list[str]]]:
    """(what it needs, command) for every write of a publish, a retraction, the check of
    an uncertain write's outcome and the liveness key."""
    keys = settings.keys
    proposal = keys.proposal(settings.symbols[0] if settings.symbols else PROBE_SYMBOL)
    on_proposals = f"write access to keys {keys.harvest_prefix}*"
    out = [
        (on_proposals, ["DEL", proposal]),
        (on_proposals, ["HSET", proposal, "probe", "1"]),
    ]
    if settings.proposal_ttl_sec > 0:
        out.append((on_proposals, ["PEXPIRE", proposal, "1000"]))
    script_keys = [proposal]
    group = settings.group
    if group is not None:
        # a publisher group's leases and epochs (INTERFACE §6), checked by the write script
        lease, epoch = keys.lease(group, 0), keys.epoch(group, 0)
        on_leases = f"write access to keys {LEASE_PREFIX}{group}:* and {EPOCH_PREFIX}{group}:*"
        for cmd in (
            ["GET", lease],
            ["SET", lease, "probe", "NX", "PX", "1000"],
            ["PEXPIRE", lease, "1000"],
            ["DEL", lease],
            ["GET", epoch],
            ["INCR", epoch],
        ):
            out.append((on_leases, cmd))
        script_keys += [lease, epoch]
    if settings.enable_stream:
        stream = keys.stream
        script_keys.append(stream)
        out.append(
            (
                f"write access to the stream {stream}",
                ["XADD", stream, "MAXLEN", "~", str(settings.stream_maxlen), "*", "probe", "1"],
            )
        )
        out.append(
            (f"read access to the stream {stream}", ["XREVRANGE", stream, "+", "-", "COUNT", "1"])
        )
    # the uncertain-write check reads the hash's seq
    out.append((f"read access to keys {keys.harvest_prefix}*", ["HGET", proposal, "seq"]))
    out.append(
        (
            f"the proposal write script on {' and '.join(script_keys)}",
            ["EVALSHA", WRITE_SHA, str(len(script_keys)), *script_keys],
        )
    )
    if liveness:
        key = keys.liveness(instance or settings.instance)
        on_liveness = f"write access to the liveness key {key}"
        out.append((on_liveness, ["HSET", key, "probe", "1"]))
        out.append((on_liveness, ["PEXPIRE", key, "1000"]))
        out.append((on_liveness, ["DEL", key]))
    return out


async def _transaction(probe: _Probe, queued: Sequence[tuple[str, list[str]]]) -> None:
    """MULTI alone, then each command queued (the ACL is checked when queueing), then a
    command that cannot be queued, so EXEC discards everything: nothing runs."""
    if isinstance(await probe.check("MULTI", "MULTI"), RedisReplyError):
        return  # not in a transaction: the writes must not follow
    for what, args in queued:
        await probe.check(what, *args)
    if queued:
        await probe.ask("HSET")  # the wrong number of arguments: EXEC aborts
    await probe.check("EXEC", "EXEC")


async def _channels(probe: _Probe, patterns: Sequence[str]) -> None:
    for pattern in patterns:
        await probe.check(
            f"channel pattern {pattern} (the ACL needs &{pattern})", "PSUBSCRIBE", pattern
        )


async def _input_streams(probe: _Probe, streams: Sequence[str]) -> None:
    if not streams:
        return
    async with probe.connected():
        for stream in streams:
            what = f"read access to the input stream {stream}"
            await probe.check(what, "XREVRANGE", stream, "+", "-", "COUNT", "1")
            await probe.check(what, "XREAD", "COUNT", "1", "STREAMS", stream, "$")


# -- the connection ------------------------------------------------------------------------


class _Probe:
    """One wire connection at a time; every reply checked for an ACL refusal."""

    def __init__(self, endpoint: Endpoint, where: str, *, node: str | None = None) -> None:
        self.endpoint = endpoint
        self.where = where
        self.node = node  # a cluster node's host:port, named in a refusal
        self.forced_single = False  # REDIS_CLUSTER=false: said to be one server
        self.lacks: list[str] | None = None  # a replica's refusals, noted instead of raised
        self.wire: Wire | None = None

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[_Probe]:
        """A new connection (its handshake's CLIENT SETNAME is the first check)."""
        self.wire = Wire(self.endpoint, name="harvest-async-check")
        try:
            yield self
        finally:
            self.wire.close()
            self.wire = None

    async def ask(self, *args: str) -> Reply:
        assert self.wire is not None, "ask() outside connected()"
        try:
            (reply,) = await self.wire.roundtrip(command(*args), 1)
        except PermissionDenied as exc:  # in the handshake (CLIENT SETNAME)
            if self.node is None:
                raise
            raise PermissionDenied(exc.what, f"on the cluster node {self.node}") from exc
        except AuthenticationFailed as exc:
            if self.node is None:
                raise
            raise AuthenticationFailed(f"{exc} (on the cluster node {self.node})") from exc
        except RedisUnavailable as exc:
            raise RedisUnavailable(f"checking permissions at {self.where}: {exc}") from exc
        return reply

    async def check(self, what: str, *args: str) -> Reply:
        """Send one command; raise PermissionDenied if the ACL refuses it. Other
        refusals (OOM while queueing, ...) are not this check's business."""
        reply = await self.ask(*args)
        if isinstance(reply, RedisReplyError):
            self.refused(what, reply)
            if self.node is None and str(reply).startswith(_CLUSTER_REPLIES):
                # a cluster node taken for one server (REDIS_CLUSTER=false, or an ACL
                # user that may run neither INFO nor CLUSTER SLOTS, which would tell)
                fix = (
                    "set REDIS_CLUSTER=auto or true"
                    if self.forced_single
                    else "this ACL user may run neither INFO nor CLUSTER SLOTS, which would "
                    "tell: grant +cluster|slots (docs/operations.md lists what a cluster needs)"
                )
                raise ConfigError(
                    "REDIS_CLUSTER",
                    f"{self.where} is a Redis Cluster node (it replied {reply}); {fix}",
                )
        return reply

    def refused(self, what: str, exc: BaseException) -> None:
        text = str(exc)
        if not is_permission_error(text):
            return
        command_name = denied_command(text)
        if self.lacks is not None:
            self.lacks.append(f"command {command_name}" if command_name else what)
            return
        detail = f"{text}; on the cluster node {self.node}" if self.node else text
        raise PermissionDenied(f"command {command_name}" if command_name else what, detail) from exc
