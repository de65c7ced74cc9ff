"""Offline replay throughput: input changes per second and peak memory.

Generates (once; `--keep` reuses it) a recording of `--changes` input changes of
`--symbols` symbols from `simulate.Simulator` (fixed seed, `--rate` changes per recorded
second, 30 per timestamp), then replays it in a fresh process with the default settings,
twice: engine only (outputs counted) and as the CLI does (outputs encoded as JSON lines
to /dev/null). Peak RSS is the child's `ru_maxrss`. The same replay over the first
quarter of the file shows whether memory grows with the recording's length (it should
not: it is bounded by the number of symbols). A cProfile of 100,000 changes shows where
the time goes.

Run: `.venv/bin/python bench/replay.py [--changes N] [--symbols N] [--keep] [--append]`.
`--append` appends the printed section to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import json
import os
import platform
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from harvest_async import __version__
from harvest_async.config import engine_config, settings_from_env
from harvest_async.replay.recording_writer import write_recording
from harvest_async.replay.replayer import replay
from harvest_async.replay.timeline import TimelineWriter
from harvest_async.tools.simulate import InputWrite, Simulator, symbols_for

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
T0 = 1_767_225_600.0
PER_STAMP = 30


def generate(path: Path, changes: int, symbols: int, rate: float) -> float:
    sim = Simulator(symbols_for(symbols), seed=1000, start=T0)
    step = PER_STAMP / rate

    def stream() -> Iterator[InputWrite]:
        done = 0
        for k in itertools.count(1):
            if done >= changes:
                return
            n = min(PER_STAMP, changes - done)
            yield from sim.advance(round(T0 + k * step, 3), n)
            done += n

    began = time.perf_counter()
    write_recording(path, start=T0, initial=sim.initial(), changes=stream())
    return time.perf_counter() - began


def head(path: Path, out: Path, lines: int) -> None:
    """The first `lines` lines (a recording without its end marker: still replayable)."""
    with path.open("rb") as src, out.open("wb") as dst:
        for line in itertools.islice(src, lines):
            dst.write(line)


def child(path: str, mode: str) -> None:
    """Runs in a fresh process: one replay, one JSON line of results on stdout."""
    config = engine_config(settings_from_env({}))
    began = time.perf_counter()
    if mode == "engine":
        count = [0]

        def emit(outputs: list[object]) -> None:
            count[0] += len(outputs)

        stats = replay(path, config, emit)  # type: ignore[arg-type]
    else:
        with open(os.devnull, "wb") as sink:
            writer = TimelineWriter(io.BufferedWriter(sink), "jsonl")  # type: ignore[arg-type]
            stats = replay(path, config, writer.write)
            writer.detach()
    seconds = time.perf_counter() - began
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "changes": stats.changes,
        "outputs": stats.outputs,
        "publishes": stats.publishes,
        "retracts": stats.retracts,
        "symbols": stats.symbols,
        "recorded_s": stats.end - stats.start,
        "seconds": seconds,
        "peak_rss_mib": peak_kib / 1024,
    }
    sys.stdout.write(json.dumps(result) + "\n")


def run_child(path: Path, mode: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(path), "--mode", mode],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"replay child ({mode}) failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# (file name, function name) -> label, for the cumulative split
_SPLIT = (
    (("replay.py", "run"), "whole replay (cProfile adds overhead)"),
    (("engine.py", "evaluate"), "Engine.evaluate (codec + kernel + gate + proposal)"),
    (("codec.py", "evaluate_parsed"), "↳ evaluate_parsed (parsed hashes -> kernel inputs)"),
    (("kernel.py", "compute"), "↳ kernel.compute"),
    (("codec.py", "proposal_fields"), "↳ proposal_fields (publishes only)"),
    (("engine.py", "observe"), "Engine.observe"),
    (("input_hashes.py", "trim"), "input_hashes.trim (the live reader's field filter)"),
    (("~", "<method 'decode_lines' of 'msgspec.json.Decoder' objects>"), "decoding the lines"),
)


def profile(path: Path, top: int = 8) -> str:
    config = engine_config(settings_from_env({}))
    prof = cProfile.Profile()
    prof.enable()
    replay(path, config, lambda _outs: None)
    prof.disable()
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    raw = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    whole = next(v[3] for k, v in raw.items() if Path(k[0]).name == "replayer.py" and k[2] == "run")
    lines = ["| part (cumulative) | time | share |", "|---|---|---|"]
    for (file, name), label in _SPLIT:
        cum = sum(v[3] for k, v in raw.items() if Path(k[0]).name == file and k[2] == name)
        lines.append(f"| {label} | {cum:.2f} s | {cum / whole:.0%} |")
    lines += ["", "| function (own time) | time | share |", "|---|---|---|"]
    for (file, lineno, name), v in sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:top]:
        where = f"{Path(file).name}:{lineno}({name})" if lineno else name
        lines.append(f"| `{where}` | {v[2]:.2f} s | {v[2] / whole:.0%} |")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"Python {platform.python_version()} ({platform.python_implementation()}), msgspec "
        f"{msgspec.__version__}, harvest-async {__version__}; {platform.system()} "
        f"{platform.release()} {platform.machine()}, {cpu}, {os.cpu_count()} CPUs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=300.0, help="changes per recorded second")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--keep", action="store_true", help="reuse a generated recording")
    parser.add_argument("--repeat", type=int, default=2, help="best of N (engine only)")
    parser.add_argument("--append", action="store_true", help="append to BENCHMARKS.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="engine", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.mode)
        return

    name = f"harvest-replay-bench-{args.changes}-{args.symbols}-{args.rate:g}.jsonl"
    path = args.dir / name
    if args.keep and path.exists():
        gen_s = None
    else:
        print(f"generating {args.changes:,} changes of {args.symbols} symbols ...", file=sys.stderr)
        gen_s = generate(path, args.changes, args.symbols, args.rate)
    size_mib = path.stat().st_size / 2**20
    engine_runs = [run_child(path, "engine") for _ in range(max(1, args.repeat))]
    best = min(engine_runs, key=lambda r: r["seconds"])
    cli = run_child(path, "cli")
    quarter = args.dir / ("quarter-" + name)
    head(path, quarter, args.changes // 4 + 1)
    small = run_child(quarter, "engine")
    slice_path = args.dir / ("profile-" + name)
    head(path, slice_path, 100_001)
    prof = profile(slice_path)
    for tmp in (quarter, slice_path):
        tmp.unlink()
    if not args.keep:
        path.unlink()

    def rate(r: dict[str, float]) -> str:
        return f"{r['changes'] / r['seconds']:,.0f} changes/s ({r['seconds']:.2f} s)"

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    outputs = (
        f"{int(best['outputs']):,} ({int(best['publishes']):,} publishes, "
        f"{int(best['retracts']):,} retractions)"
    )
    load = os.getloadavg()[0]
    section = f"""
## Offline replay (issue 4)

Command: `.venv/bin/python bench/replay.py` (add `--append` to append a section here).
A recording of {args.changes:,} input changes of {args.symbols:,} symbols generated by
`simulate.Simulator` (seed 1000, {args.rate:g} changes per recorded second, 30 per
timestamp: {best["recorded_s"]:,.0f} s of recorded time; {size_mib:,.0f} MiB of JSON lines),
replayed with the default settings (floor 10 s, heartbeat and reconcile 60 s) in a
fresh process. Target: >= 100,000 changes/s, memory bounded by the number of symbols.

### {stamp}

{machine()}; load average {load:.2f} when measured (the machine is shared)

| measurement | result |
|---|---|
| replay, outputs counted (best of {len(engine_runs)}) | {rate(best)} |
| replay, outputs encoded as JSON lines (what the CLI does) | {rate(cli)} |
| outputs | {outputs} |
| peak RSS, {int(best["changes"]):,} changes | {best["peak_rss_mib"]:.0f} MiB |
| peak RSS, first {int(small["changes"]):,} changes | {small["peak_rss_mib"]:.0f} MiB |
{f"| generating the recording | {gen_s:.1f} s |" if gen_s is not None else ""}

Where the time goes (cProfile of the first 100,000 changes):

{prof}
"""
    print(section)
    if args.append:
        with BENCHMARKS.open("a") as f:
            f.write(section)


if __name__ == "__main__":
    main()
