"""`watch` with one cluster primary lost (`Watcher` on fake key events): only the rows
whose proposal key that node holds are stale; the others are read per node, and a
publisher whose liveness key is there is unknown, not gone. The live cluster scenario is
`tests/integration/test_cluster_watch.py`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import redis.exceptions as rexc

from harvest_async.core.keys import Keys
from harvest_async.redis_io.liveness import Publisher
from harvest_async.tools.watch import watcher as watcher_module
from harvest_async.tools.watch.model import WatchModel
from harvest_async.tools.watch.render import render
from harvest_async.tools.watch.watcher import Watcher

KEYS = Keys()
ON_B = {"BBBUSDT", "BBB2USDT"}  # the symbols whose keys (and liveness keys) node b holds


class Events:
    """Key events of a two-node cluster, a and b; `lost` the nodes known lost."""

    def __init__(self, lost: Sequence[str] = ()) -> None:
        self.lost = set(lost)

    def node_of(self, key: str) -> str:
        return "b" if any(key.endswith(s) for s in (*ON_B, "vps-b")) else "a"

    def lost_nodes(self) -> frozenset[str]:
        return frozenset(self.lost)

    def lose(self, node: str) -> None:
        self.lost.add(node)


def watcher(events: Events) -> Watcher:
    return Watcher(object(), KEYS, events=events, symbols=["AAAUSDT", *sorted(ON_B)])  # type: ignore[arg-type]


def fake_reads(monkeypatch: pytest.MonkeyPatch, down: set[str], events: Events) -> list[str]:
    """hgetall_many per node: node b's keys refused while it is in `down`."""
    asked: list[str] = []

    async def hgetall_many(client: Any, keys: Sequence[str]) -> list[dict[str, str]]:
        nodes = {events.node_of(k) for k in keys}
        assert len(nodes) == 1, keys  # one node per read
        asked.extend(nodes)
        if nodes & down:
            raise rexc.ConnectionError(f"connecting to {nodes}")
        return [{"harvest_action": "NONE", "R_net": "1.0"} for _ in keys]

    monkeypatch.setattr(watcher_module, "hgetall_many", hgetall_many)
    return asked


async def test_a_node_failing_a_read_spoils_only_its_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = Events()
    w = watcher(events)
    fake_reads(monkeypatch, {"b"}, events)
    got = await w._read(["AAAUSDT", *sorted(ON_B)])
    assert got[0] == {"harvest_action": "NONE", "R_net": "1.0"}
    assert got[1:] == [None, None]
    assert events.lost == {"b"}
    # lost: not asked again until the next subscription
    asked = fake_reads(monkeypatch, set(), events)
    await w._read(["AAAUSDT", *sorted(ON_B)])
    assert asked == ["a"]


async def test_every_node_failing_is_redis_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    events = Events()
    fake_reads(monkeypatch, {"a", "b"}, events)
    monkeypatch.setattr(Events, "node_of", lambda self, key: "a" if "AAA" in key else "b")

    async def both_down(client: Any, keys: Sequence[str]) -> list[dict[str, str]]:
        raise rexc.ConnectionError("down")

    monkeypatch.setattr(watcher_module, "hgetall_many", both_down)
    with pytest.raises(rexc.ConnectionError):
        await watcher(events)._read(["AAAUSDT", "BBBUSDT"])


async def test_load_marks_only_the_lost_nodes_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    events = Events()
    w = watcher(events)
    fake_reads(monkeypatch, set(), events)

    async def no_retractions(count: int = 500) -> list[tuple[float, str, str]]:
        return []

    monkeypatch.setattr(w, "_recent_retractions", no_retractions)
    await w.load()
    assert set(w.model.rows) == {"AAAUSDT", *ON_B} and not w.model.stale
    events.lost.add("b")
    fake_reads(monkeypatch, {"b"}, events)
    await w.load()
    assert w.model.stale == ON_B and w.model.lost_nodes == ["b"]
    assert all(w.model.rows[s].fields is not None for s in ON_B)  # kept, not retracted
    events.lost.clear()
    fake_reads(monkeypatch, set(), events)
    await w.load()
    assert not w.model.stale and not w.model.lost_nodes


async def test_a_publisher_on_the_lost_node_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    events = Events(["b"])
    w = watcher(events)
    w.model.publishers = [Publisher("vps-a"), Publisher("vps-b")]

    async def scan_without_b(client: Any, keys: Keys, *, names: Any = None) -> list[Publisher]:
        return []  # neither found: vps-a's key (node a) is gone, vps-b's node was skipped

    monkeypatch.setattr(watcher_module, "read_publishers", scan_without_b)
    await w.check_publishers(scan=True)
    assert w.model.publishers == [Publisher("vps-b")]
    events.lost.clear()
    await w.check_publishers(scan=True)
    assert w.model.publishers == []


def test_only_the_stale_rows_are_dimmed_and_the_node_named() -> None:
    model = WatchModel(publishers=[Publisher("vps-a")], mode="notify")
    for symbol in ("AAAUSDT", "BBBUSDT"):
        model.apply(symbol, {"harvest_action": "PARTIAL_50", "R_net": "1.5"}, 0.0)
    model.stale, model.lost_nodes = {"BBBUSDT"}, ["127.0.0.1:7002"]
    lines = render(model, 100.0, width=120, color=True)
    text = "\n".join(lines)
    assert "node 127.0.0.1:7002 unreachable: 1 rows stale" in text
    assert "REDIS UNREACHABLE" not in text
    row = {
        s: next(line for line in lines if s in line and "R=" not in line)
        for s in ("AAAUSDT", "BBBUSDT")
    }
    assert "\x1b[33mPARTIAL_50" in row["AAAUSDT"]  # live: the action's colour
    assert "\x1b[2mPARTIAL_50" in row["BBBUSDT"]  # stale: dimmed
