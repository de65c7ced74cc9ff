"""Replay output as the audit stream carries it (JSON lines or CSV), written atomically."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
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

__all__ = ["CSV_COLUMNS", "TimelineWriter", "atomic_output", "order_key", "replay_to_file"]

_FRONT = ("event", "symbol", "ts_epoch", "seq", "trigger", "plan_id", "harvest_action")
CSV_COLUMNS: tuple[str, ...] = (
    *_FRONT,
    *(name for name in PROPOSAL_FIELDS if name not in _FRONT),
    "reason",
)


class TimelineWriter:
    """Writes outputs as the audit stream carries them: JSON lines or CSV.

    Canonical order: by time, then symbol, then seq. Live, the audit stream orders the
    outputs of one instant as the round happened to evaluate them; a timeline sorts them,
    so that a replay split over processes (`--jobs`) writes the very same bytes."""

    def __init__(self, stream: IO[bytes], fmt: str = "jsonl") -> None:
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"unknown format {fmt!r}")
        self.fmt = fmt
        self.stream = stream
        self.count = 0
        self._encoder = msgspec.json.Encoder()
        self._text: io.TextIOWrapper | None = None
        self._at = -math.inf  # the instant being collected
        self._pending: list[Output] = []
        if fmt == "csv":
            self._text = io.TextIOWrapper(stream, encoding="utf-8", newline="", write_through=True)
            self._csv = csv.DictWriter(
                self._text, fieldnames=CSV_COLUMNS, lineterminator="\n", extrasaction="ignore"
            )
            self._csv.writeheader()

    def write(self, outputs: Sequence[Output]) -> None:
        pending = self._pending
        for out in outputs:
            if out.at != self._at:
                if out.at < self._at:
                    raise ValueError(f"outputs out of time order: {out.at} after {self._at}")
                self._flush_instant()
                self._at = out.at
            pending.append(out)

    def _flush_instant(self) -> None:
        pending = self._pending
        if not pending:
            return
        if len(pending) > 1:
            pending.sort(key=order_key)
        if self._text is None:
            encode = self._encoder.encode
            write = self.stream.write
            for out in pending:
                write(encode(out.audit_fields()))
                write(b"\n")
        else:
            for out in pending:
                self._csv.writerow(out.audit_fields())
        self.count += len(pending)
        pending.clear()

    def write_encoded(self, bodies: Iterable[bytes]) -> None:
        """Outputs already encoded as JSON audit entries, already in timeline order."""
        if self._text is None:
            write = self.stream.write
            for body in bodies:
                write(body if body.endswith(b"\n") else body + b"\n")
                self.count += 1
        else:
            decode = msgspec.json.Decoder(dict[str, str]).decode
            for body in bodies:
                self._csv.writerow(decode(body))
                self.count += 1

    def detach(self) -> None:
        """Write what is pending, flush; leave the underlying stream open."""
        self._flush_instant()
        if self._text is not None:
            self._text.flush()
            self._text.detach()
            self._text = None
        self.stream.flush()


def order_key(out: Output) -> tuple[float, str, int]:
    """A timeline's order: time, symbol, seq (unique: seq grows per symbol)."""
    return (out.at, out.symbol, out.seq)


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
    jobs: int = 1,
) -> ReplayStats:
    """Replay into `out` (None or '-': stdout). A file is written under a temporary name
    and renamed only when the whole recording replayed: a bad line leaves no output that
    looks complete."""
    if jobs > 1:
        return _replay_jobs_to_file(path, config, out, fmt=fmt, jobs=jobs)
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


def _replay_jobs_to_file(
    path: str | os.PathLike[str], config: EngineConfig, out: str | None, *, fmt: str, jobs: int
) -> ReplayStats:
    from harvest_async.replay.parallel import replay_parallel  # noqa: PLC0415 - a cycle

    if out is None or out == "-":
        writer = TimelineWriter(sys.stdout.buffer, fmt)
        try:
            return replay_parallel(path, config, writer, jobs)
        finally:
            writer.detach()
    with atomic_output(out) as stream:
        writer = TimelineWriter(stream, fmt)
        stats = replay_parallel(path, config, writer, jobs)
        writer.detach()
    return stats
