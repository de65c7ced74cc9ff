"""`replay --jobs N`: the symbols split over N processes, the timelines merged.

Each symbol's decisions depend on its own inputs alone (its engine state, its timers), so
a process that replays only the symbols of one partition (`core.partition.partition_of`)
decides for them exactly as a single process would. Every worker writes its timeline in
the canonical order (time, symbol, seq; `timeline.order_key`) with that key in front of
each line; the parent merges the N files by key and writes what one process would have
written, byte for byte. Each worker still decodes the whole recording (a few percent of
the work); the engine's work is what is split.
"""

from __future__ import annotations

import heapq
import multiprocessing
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import msgspec

from harvest_async.core.engine import EngineConfig
from harvest_async.core.ports import Output
from harvest_async.replay.replayer import ReplayStats, replay
from harvest_async.replay.timeline import TimelineWriter, order_key

__all__ = ["replay_parallel"]


def _worker(path: str, config: EngineConfig, part: int, jobs: int, out: str) -> dict[str, object]:
    """Replay partition `part` of `jobs` into `out` (keyed lines); its stats."""
    buffer: list[Output] = []
    at = float("-inf")
    encode = msgspec.json.Encoder().encode
    with open(out, "wb") as stream:

        def flush() -> None:
            buffer.sort(key=order_key)
            for o in buffer:
                stream.write(b"%r\t%s\t%d\t" % (o.at, o.symbol.encode(), o.seq))
                stream.write(encode(o.audit_fields()))
                stream.write(b"\n")
            buffer.clear()

        def emit(outputs: list[Output]) -> None:
            nonlocal at
            for o in outputs:
                if o.at != at:
                    flush()
                    at = o.at
                buffer.append(o)

        stats = replay(path, config, emit, partition=(part, jobs))
        flush()
    return asdict(stats)


def _lines(path: Path) -> Iterator[tuple[tuple[float, bytes, int], bytes]]:
    with path.open("rb") as stream:
        for line in stream:
            at, symbol, seq, body = line.split(b"\t", 3)
            yield (float(at), symbol, int(seq)), body


def replay_parallel(
    path: str | os.PathLike[str], config: EngineConfig, writer: TimelineWriter, jobs: int
) -> ReplayStats:
    """Replay `path` in `jobs` processes and write the merged timeline through `writer`
    (its format: JSON lines are copied as they are, CSV rows decoded from them)."""
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    with tempfile.TemporaryDirectory(prefix="harvest-replay-") as tmp:
        parts = [Path(tmp) / f"part-{k}.keyed" for k in range(jobs)]
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = [
                pool.submit(_worker, os.fspath(path), config, k, jobs, os.fspath(p))
                for k, p in enumerate(parts)
            ]
            results = [f.result() for f in futures]
        merged = heapq.merge(*(_lines(p) for p in parts), key=lambda item: item[0])
        writer.write_encoded(body for _key, body in merged)
    return _combine(results)


def _combine(parts: list[dict[str, object]]) -> ReplayStats:
    """One process's stats from the partitions': counts add up, times are shared."""
    first = ReplayStats(**parts[0])  # type: ignore[arg-type]
    total = ReplayStats(
        start=first.start,
        end=first.end,
        snapshots=first.snapshots,
        end_reason=first.end_reason,
        complete=all(bool(p["complete"]) for p in parts),
    )
    for name in ("changes", "rounds", "publishes", "retracts", "invalid", "symbols"):
        setattr(total, name, sum(int(p[name]) for p in parts))  # type: ignore[call-overload]
    return total
