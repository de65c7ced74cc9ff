"""Replay output as the audit stream carries it (JSON lines or CSV), written atomically."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from time import perf_counter
from typing import IO

import msgspec

from harvest_async.core.engine import EngineConfig
from harvest_async.core.ports import Output
from harvest_async.core.proposal import PROPOSAL_FIELDS
from harvest_async.replay.recording_writer import open_output
from harvest_async.replay.replayer import ReplayStats, replay

# -- output ---------------------------------------------------------------------------

__all__ = ["CSV_COLUMNS", "TimelineWriter", "atomic_output", "replay_to_file"]

_FRONT = ("event", "symbol", "ts_epoch", "seq", "trigger", "plan_id", "harvest_action")
CSV_COLUMNS: tuple[str, ...] = (
    *_FRONT,
    *(name for name in PROPOSAL_FIELDS if name not in _FRONT),
    "reason",
)


class TimelineWriter:
    """Writes outputs as the audit stream carries them: JSON lines or CSV."""

    def __init__(self, stream: IO[bytes], fmt: str = "jsonl") -> None:
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"unknown format {fmt!r}")
        self.fmt = fmt
        self.stream = stream
        self.count = 0
        self._encoder = msgspec.json.Encoder()
        self._text: io.TextIOWrapper | None = None
        if fmt == "csv":
            self._text = io.TextIOWrapper(stream, encoding="utf-8", newline="", write_through=True)
            self._csv = csv.DictWriter(
                self._text, fieldnames=CSV_COLUMNS, lineterminator="\n", extrasaction="ignore"
            )
            self._csv.writeheader()

    def write(self, outputs: Sequence[Output]) -> None:
        if self._text is None:
            encode = self._encoder.encode
            write = self.stream.write
            for out in outputs:
                write(encode(out.audit_fields()))
                write(b"\n")
        else:
            for out in outputs:
                self._csv.writerow(out.audit_fields())
        self.count += len(outputs)

    def detach(self) -> None:
        """Flush; leave the underlying stream open."""
        if self._text is not None:
            self._text.flush()
            self._text.detach()
            self._text = None
        self.stream.flush()


class _Progress:
    """A one-line bar on stderr, redrawn at most ~5 times a second (only on a terminal)."""

    def __init__(self, stream: IO[str], label: str) -> None:
        self.stream = stream
        self.label = label
        self._last = -1.0
        self._clock = perf_counter
        self._began = perf_counter()

    def __call__(self, fraction: float, stats: ReplayStats) -> None:
        now = self._clock()
        if now - self._last < 0.2 and fraction < 1.0:
            return
        self._last = now
        width = 30
        filled = int(width * fraction)
        rate = stats.changes / max(now - self._began, 1e-9)
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%} "
            f"{stats.changes:,} changes, {stats.outputs:,} outputs ({rate:,.0f}/s)"
        )
        self.stream.flush()

    def done(self) -> None:
        if self._last >= 0:
            self.stream.write("\n")
            self.stream.flush()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A file that appears at `path` only when the block finishes without an error."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.partial")
    stream = open_output(tmp, compress=target.name.endswith(".gz"))
    try:
        yield stream  # type: ignore[misc]
    except BaseException:
        stream.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    stream.close()
    os.replace(tmp, target)


def replay_to_file(
    path: str | os.PathLike[str],
    config: EngineConfig,
    out: str | None,
    *,
    fmt: str = "jsonl",
    show_progress: bool | None = None,
    reconcile_every: float | None = None,
) -> ReplayStats:
    """Replay into `out` (None or '-': stdout). A file is written under a temporary name
    and renamed only when the whole recording replayed: a bad line leaves no output that
    looks complete."""
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    bar = _Progress(sys.stderr, Path(path).name) if show_progress else None
    try:
        if out is None or out == "-":
            writer = TimelineWriter(sys.stdout.buffer, fmt)
            try:
                stats = replay(
                    path, config, writer.write, reconcile_every=reconcile_every, progress=bar
                )
            finally:
                writer.detach()
            return stats
        with atomic_output(out) as stream:
            writer = TimelineWriter(stream, fmt)
            stats = replay(
                path, config, writer.write, reconcile_every=reconcile_every, progress=bar
            )
            writer.detach()
        return stats
    finally:
        if bar is not None:
            bar.done()
