"""`record --from-streams` throughput and memory, next to `replay` on the same data.

Starts a private server (the tests' way of finding a binary), writes `--changes` input
changes of `--symbols` symbols from `simulate.Simulator` (seed 1000, 300 changes per
recorded second, 30 per timestamp) as entries of three input streams (`symbol` + the
whole hash, explicit IDs at the simulated times: the shape docs/recording.md describes),
then, each in a fresh process: converts the whole history, the first quarter of it
(memory must not grow with the history's length), the whole history with
`--snapshot-from` (two passes), and replays the converted recording (the throughput the
conversion must at least reach).

Run: `.venv/bin/python bench/from_streams.py [--changes N] [--symbols N] [--append]`.
`--append` appends the printed section to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import redis.asyncio as aioredis

from harvest_async.config import settings_from_env
from harvest_async.replay.from_streams import parse_stream_specs
from harvest_async.replay.from_streams_record import record_from_streams
from harvest_async.replay.replayer import engine_config_for, replay
from harvest_async.replay.stream_window import StreamBound
from harvest_async.tools.embedded_server import EmbeddedRedis, find_redis_servers
from harvest_async.tools.simulate import Simulator, symbols_for

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
T0 = 1_767_225_600.0
PER_STAMP = 30
RATE = 300.0
STREAMS = {
    "marketstate": "quantum:stream:marketstate",
    "risk": "quantum:stream:risk.proposal",
    "position": "quantum:stream:positions",
}
SPEC = ",".join(f"{name}={kind}" for kind, name in STREAMS.items())


async def fill(url: str, changes: int, symbols: int) -> float:
    """The simulated history as stream entries; returns the last entry's time."""
    client = aioredis.Redis.from_url(url, decode_responses=True)
    sim = Simulator(symbols_for(symbols), seed=1000, start=T0)
    step = PER_STAMP / RATE
    pipe = client.pipeline(transaction=False)
    queued = 0
    at = T0
    done = 0
    for k in itertools.count(0):
        if k and done >= changes:
            break
        at = T0 + k * step
        if k == 0:
            writes = sim.initial()
        else:
            writes = sim.advance(round(at, 3), min(PER_STAMP, changes - done))
            done += len(writes)
        for w in writes:
            entry = {"symbol": w.symbol}
            entry.update({"op": "delete"} if w.op == "delete" else w.fields)
            pipe.xadd(STREAMS[w.kind], entry, id=f"{int(at * 1000)}-*")  # type: ignore[arg-type]
            queued += 1
        if queued >= 5000:
            await pipe.execute()
            queued = 0
    await pipe.execute()
    await client.aclose()
    return at


def child(url: str, out: str, mode: str, until: float) -> None:
    """Runs in a fresh process: one conversion or replay; one JSON line of results."""
    began = time.perf_counter()
    if mode == "replay":
        stats = replay(out, engine_config_for(settings_from_env({})), lambda _outputs: None)
        result = {"items": stats.changes, "outputs": stats.outputs}
    else:
        settings = settings_from_env({"REDIS_URL": url})
        converted = asyncio.run(
            record_from_streams(
                settings,
                out,
                parse_stream_specs([SPEC]),
                until=None if mode == "snapshot" else StreamBound.at_time(until),
                snapshot_from=url if mode == "snapshot" else None,
            )
        )
        result = {"items": converted.entries, "changes": converted.changes}
    result["seconds"] = time.perf_counter() - began
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.stdout.write(json.dumps(result) + "\n")


def run_child(url: str, out: Path, mode: str, until: float) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", url, "--out", str(out), "--mode", mode]
    done = subprocess.run(
        [*command, "--until", repr(until)],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"child ({mode}) failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--append", action="store_true", help="append to BENCHMARKS.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--until", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.out, args.mode, args.until)
        return

    binary = find_redis_servers()[0]
    out = args.dir / f"harvest-from-streams-bench-{os.getpid()}.jsonl.gz"
    with EmbeddedRedis(binary) as server:
        print(f"writing {args.changes:,} stream entries ...", file=sys.stderr)
        began = time.perf_counter()
        last = asyncio.run(fill(server.url, args.changes, args.symbols))
        fill_s = time.perf_counter() - began
        quarter_until = T0 + (last - T0) / 4
        plain = out.with_name(out.name.removesuffix(".gz"))
        runs = {
            "plain": run_child(server.url, plain, "whole", last),
            "quarter": run_child(server.url, out, "quarter", quarter_until),
            "snapshot": run_child(server.url, out, "snapshot", last),
            "whole": run_child(server.url, out, "whole", last),  # the file the replay reads
        }
        runs["replay"] = run_child(server.url, out, "replay", last)
    size_mib = out.stat().st_size / 2**20
    out.unlink()
    plain.unlink()

    def rate(r: dict[str, float], what: str) -> str:
        speed = f"{r['items'] / r['seconds']:,.0f} {what}/s ({r['seconds']:.2f} s)"
        return f"{speed} | {r['peak_rss_mib']:.0f} MiB"

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    whole, quarter, snap, rep = runs["whole"], runs["quarter"], runs["snapshot"], runs["replay"]
    plain_run = runs["plain"]
    section = f"""
## Recording from stream history (issue 15)

Command: `.venv/bin/python bench/from_streams.py` (add `--append` to append a section
here). {args.changes:,} input changes of {args.symbols:,} symbols from `simulate.Simulator`
(seed 1000, {RATE:g} changes per recorded second, 30 per timestamp) written as entries of
three input streams ({binary.flavour} {binary.version}, same machine), converted by
`record --from-streams` into a recording ({size_mib:,.0f} MiB gzipped), then replayed
with the default settings; each in a fresh process. Target: the conversion at least as
fast as the replay, memory bounded by the number of symbols.

### {stamp}

load average {os.getloadavg()[0]:.2f} when measured (the machine is shared); writing the
entries took {fill_s:.0f} s

| measurement | result | peak RSS |
|---|---|---|
| `record --from-streams`, whole history, `.jsonl.gz` | {rate(whole, "entries")} |
| the same, first quarter (`--until`) | {rate(quarter, "entries")} |
| the same with `--snapshot-from` (two passes) | {rate(snap, "entries")} |
| whole history, uncompressed `.jsonl` | {rate(plain_run, "entries")} |
| `replay` of the converted recording (`.jsonl.gz`) | {rate(rep, "changes")} |
"""
    print(section)
    if args.append:
        with BENCHMARKS.open("a") as f:
            f.write(section)


if __name__ == "__main__":
    main()
