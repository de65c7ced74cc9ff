"""`record`, `record --from-streams` and `replay --into` on a real 3-primary Redis Cluster
(`tests.support.cluster`, once per flavour that can build one: Redis 7.0+, Valkey).

1. Live `record`: input changes on every node are recorded (one listener per primary,
   reads routed per slot); a slot moved to another primary is recorded as a gap snapshot.
2. `replay --into` (the CLI): every key of a recording lands on the node serving its slot
   with the recorded fields, the last change of each key winning.
3. `record --from-streams` with `--snapshot-from`: streams on different nodes merged, the
   snapshot read per node.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from harvest_async.clock import SystemClock
from harvest_async.redis_io.cluster.topology import slot_of
from harvest_async.redis_io.input_writer import InputWriter
from harvest_async.replay.format import (
    FORMAT,
    KINDS,
    VERSION,
    Delete,
    End,
    Header,
    Set,
    Snapshot,
    SymbolState,
)
from harvest_async.replay.from_streams import parse_stream_specs
from harvest_async.replay.from_streams_record import record_from_streams
from harvest_async.replay.recording_reader import read_all
from harvest_async.replay.recording_writer import RecordingWriter
from tests.support.cluster import ClusterTopology, bare_cluster, producer
from tests.support.live import (
    KEYS,
    make_settings,
    market,
    position,
    put,
    put_inputs,
    risk,
    wait_for,
)
from tests.support.recording import recording

__all__ = ["bare_cluster"]  # the fixture, used by name below

pytestmark = pytest.mark.slow

SYMBOLS = [f"R{i:03d}USDT" for i in range(30)]
State = dict[str, dict[str, dict[str, str]]]  # symbol -> kind -> fields


def owners(topology: ClusterTopology, keys: list[str]) -> set[int]:
    return {topology.port_of(topology.slot_owner(slot_of(k))) for k in keys}


def final_state(header: Header, lines: list[Any]) -> State:
    """The input state a recording ends with."""
    state: State = {
        s: {k: f for k in KINDS if (f := row.get(k))} for s, row in header.snapshot.items()
    }
    for line in lines:
        if isinstance(line, Set):
            state.setdefault(line.symbol, {})[line.kind] = line.fields
        elif isinstance(line, Delete):
            state.get(line.symbol, {}).pop(line.kind, None)
        elif isinstance(line, Snapshot):
            state = {s: {k: f for k in KINDS if (f := row.get(k))} for s, row in line.state.items()}
    return {s: kinds for s, kinds in state.items() if kinds}


async def on_its_node(topology: ClusterTopology, key: str) -> dict[str, str]:
    """The hash as the node serving its slot holds it (another node would say MOVED)."""
    server = topology.slot_owner(slot_of(key))
    node = aioredis.Redis(unix_socket_path=server.unix_socket, decode_responses=True)
    try:
        fields: dict[str, str] = await node.hgetall(key)
        return fields
    finally:
        await node.aclose()


async def test_record_on_a_cluster_holds_every_nodes_changes_and_a_moved_slot_as_a_gap(
    bare_cluster: ClusterTopology, tmp_path: Path
) -> None:
    topology = bare_cluster
    assert len(owners(topology, [KEYS.position(s) for s in SYMBOLS])) == 3
    settings = make_settings(topology.url, SYMBOLS="*")
    path = tmp_path / "cluster.jsonl"
    expected: State = {}
    async with producer(topology.url) as client:
        for symbol in SYMBOLS[:20]:
            pos = position(1.0, symbol)
            mkt = await put_inputs(client, symbol, pos=pos)
            expected[symbol] = {"marketstate": mkt, "risk": risk(), "position": pos}
        async with recording(settings, path, ready_within=15) as recorder:
            initial = {s: dict(kinds) for s, kinds in expected.items()}
            # every symbol's position changes (keys on every node), new symbols appear,
            # one position is deleted
            for symbol in SYMBOLS[:20]:
                expected[symbol]["position"] = position(7.0, symbol)
                await put(client, KEYS.position(symbol), expected[symbol]["position"])
            for symbol in SYMBOLS[20:]:
                pos = position(3.0, symbol)
                mkt = await put_inputs(client, symbol, pos=pos)
                expected[symbol] = {"marketstate": mkt, "risk": risk(), "position": pos}
            await client.delete(KEYS.position(SYMBOLS[0]))
            del expected[SYMBOLS[0]]["position"]

            async def caught_up() -> bool:
                return all(
                    (recorder.known.get(s) or (None, None, None))[2] == kinds.get("position")
                    for s, kinds in expected.items()
                )

            await wait_for(caught_up, "the recorder to see every change", limit=10.0)
            # the slot of one position key moved to another primary: the next read there
            # is MOVED, the map changes, and the recorder snapshots again
            moved = SYMBOLS[1]
            slot = slot_of(KEYS.position(moved))
            source = topology.slot_owner(slot)
            target = next(s for s in topology.primaries() if s is not source)
            assert await anyio.to_thread.run_sync(topology.move_slots, slot, slot, target) == 1
            expected[moved]["position"] = position(9.0, moved)
            await put(client, KEYS.position(moved), expected[moved]["position"])

            async def gap_recorded() -> bool:
                writer = recorder.writer
                return writer is not None and writer.snapshots > 0 and await caught_up()

            await wait_for(gap_recorded, "a gap snapshot after the slot moved", limit=15.0)
    header, lines = read_all(path)
    assert {
        s: {k: f for k in KINDS if (f := row.get(k))} for s, row in header.snapshot.items()
    } == (initial)
    assert final_state(header, lines) == expected
    gaps = [line for line in lines if isinstance(line, Snapshot)]
    assert [g.reason for g in gaps] == ["cluster topology changed"]
    assert set(gaps[0].state) == set(expected)  # the whole state again, every node's
    assert isinstance(lines[-1], End) and lines[-1].reason == "cancelled"


def write_recording(path: Path, start: float) -> State:
    """A recording over 30 symbols (keys on every node): a snapshot, a group of changes
    spanning every node, a delete and a later rewrite; returns its final state."""
    snapshot = {
        s: SymbolState(market(ts_timestamp=str(int(start))), risk(), position(1.0, s))
        for s in SYMBOLS
    }
    header = Header(format=FORMAT, version=VERSION, start=start, source="test", snapshot=snapshot)
    writer = RecordingWriter(path, header)
    expected: State = {
        s: {"marketstate": st.marketstate or {}, "risk": risk(), "position": position(1.0, s)}
        for s, st in snapshot.items()
    }
    for symbol in SYMBOLS:  # one group (one timestamp) over every node
        fields = position(5.0, symbol)
        writer.set(start + 0.01, "position", symbol, fields)
        expected[symbol]["position"] = fields
    writer.delete(start + 0.02, "risk", SYMBOLS[3])
    del expected[SYMBOLS[3]]["risk"]
    fields = {**position(8.0, SYMBOLS[4]), "extra": "x"}
    writer.set(start + 0.03, "position", SYMBOLS[4], fields)
    expected[SYMBOLS[4]]["position"] = fields
    writer.close(end_at=start + 0.05, reason="test")
    return expected


async def test_replay_into_a_cluster_writes_every_key_on_its_node(
    bare_cluster: ClusterTopology, tmp_path: Path
) -> None:
    topology = bare_cluster
    path = tmp_path / "small.jsonl"
    expected = write_recording(path, SystemClock().now() - 60)
    env = {**os.environ, "REDIS_CLUSTER": "auto"}
    done = await anyio.run_process(
        [
            sys.executable,
            "-m",
            "harvest_async",
            "replay",
            str(path),
            "--into",
            topology.url,
            "--speed",
            "0",
            "--keep-times",
        ],
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert "per-node pipelined groups" in done.stdout.decode()
    keys = [KEYS.input_key(k, s) for s in SYMBOLS for k in KINDS]
    assert len(owners(topology, keys)) == 3
    for symbol in SYMBOLS:
        for kind in KINDS:
            got = await on_its_node(topology, KEYS.input_key(kind, symbol))
            assert got == expected[symbol].get(kind, {}), (symbol, kind)


async def test_record_from_streams_on_a_cluster_with_a_snapshot(
    bare_cluster: ClusterTopology, tmp_path: Path
) -> None:
    topology = bare_cluster
    streams = {"marketstate": "inputs:marketstate", "position": "inputs:position"}
    assert len(owners(topology, list(streams.values()))) == 2  # two nodes' streams merged
    settings = make_settings(topology.url, SYMBOLS="*")
    clock = SystemClock()
    expected: State = {}
    async with producer(topology.url) as client:
        writer = InputWriter(client, KEYS, ttl={}, streams=streams, transaction=False)
        for step in range(3):
            changes = []
            for symbol in SYMBOLS[:12]:
                mkt = market(sigma=f"0.00{step + 1}")
                # no `symbol` field: a stream entry's `symbol` names the key (docs/recording.md)
                pos = position(float(step), None)
                changes += [_Write("marketstate", symbol, mkt), _Write("position", symbol, pos)]
                expected[symbol] = {"marketstate": mkt, "position": pos}
            await writer.write(changes, stream_at=clock.now())
            await anyio.sleep(0.01)
        for symbol in SYMBOLS[:12]:  # risk has no stream: held at the snapshot's values
            await put(client, KEYS.risk(symbol), risk())
            expected[symbol]["risk"] = risk()
    specs = parse_stream_specs(
        [f"{streams['marketstate']}=marketstate,{streams['position']}=position"]
    )
    out = tmp_path / "history.jsonl"
    stats = await record_from_streams(settings, str(out), specs, snapshot_from=topology.url)
    assert stats.warnings() == ["no stream for risk: held at the snapshot's values"]
    header, lines = read_all(out)
    assert final_state(header, lines) == expected
    # the history itself: three changes of every symbol's position, in order
    pnl = [
        line.fields["unrealized_pnl"]
        for line in lines
        if isinstance(line, Set) and line.kind == "position" and line.symbol == SYMBOLS[0]
    ]
    first = header.snapshot.get(SYMBOLS[0])
    seen = ([first.position["unrealized_pnl"]] if first and first.position else []) + pnl
    assert seen == ["0.0", "1.0", "2.0"]


class _Write:
    def __init__(self, kind: str, symbol: str, fields: dict[str, str]) -> None:
        self.kind = kind
        self.symbol = symbol
        self.op = "set"
        self.fields = fields
