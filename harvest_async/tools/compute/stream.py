"""Reading a stream of cases (a JSON array, or JSON lines in bounded blocks) and writing
their lines: `run_compute`, what the `compute` command runs."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from typing import IO

import msgspec

from harvest_async.core.models import Theta
from harvest_async.tools.compute.cases import (
    DEFAULT_THETA,
    Case,
    ServiceCase,
    ServiceChecks,
    decode_cases,
    decode_raw_list,
    decode_service_cases,
)
from harvest_async.tools.compute.runner import CaseRunner

__all__ = ["READ_BYTES", "run_compute"]

# JSON lines are read in blocks of this size, so memory stays bounded for any input.
READ_BYTES = 4 << 20


def _run_array(data: bytes, runner: CaseRunner) -> None:
    if runner.checks is not None:
        try:
            service_cases: list[ServiceCase] | None = decode_service_cases(data)
        except msgspec.DecodeError:
            service_cases = None
        if service_cases is not None:
            for index, service_case in enumerate(service_cases):
                runner.run_service_case(index, service_case)
                if not index & 0x3FFF:
                    runner.flush()
            return
    else:
        try:
            cases: list[Case] | None = decode_cases(data)
        except msgspec.DecodeError:
            cases = None  # a bad case, or bad JSON: split first to tell which
        if cases is not None:
            run_case = runner.run_case
            for index, case in enumerate(cases):
                run_case(index, case)
                if not index & 0x3FFF:
                    runner.flush()
            return
    try:
        raws = decode_raw_list(data)
    except msgspec.DecodeError as exc:
        runner.error(None, f"input is not a valid JSON array: {exc}")
        return
    for index, raw in enumerate(raws):
        runner.run_raw(index, raw)
        if not index & 0x3FFF:
            runner.flush()


def _blocks(first: bytes, stream: IO[bytes], size: int) -> Iterator[bytes]:
    yield first
    while True:
        block = stream.read(size)
        if not block:
            return
        yield block


def _run_lines(blocks: Iterable[bytes], runner: CaseRunner) -> None:
    first_line = 1
    rest = b""
    for block in blocks:
        lines = (rest + block if rest else block).split(b"\n")
        rest = lines.pop()  # the unfinished last line; b"" after a final newline
        runner.run_lines(lines, first_line)
        first_line += len(lines)
    runner.run_lines([rest], first_line)


def _binary_reader(stream: IO[bytes] | IO[str]) -> IO[bytes]:
    buffer = getattr(stream, "buffer", None)
    if isinstance(stream, io.TextIOBase):
        if buffer is not None:
            return buffer  # type: ignore[no-any-return]
        return io.BytesIO(stream.read().encode())
    return stream  # type: ignore[return-value]


def _binary_writer(stream: IO[bytes] | IO[str]) -> Callable[[bytes], object]:
    if isinstance(stream, io.TextIOBase):
        buffer = getattr(stream, "buffer", None)
        if buffer is not None:
            stream.flush()
            return buffer.write  # type: ignore[no-any-return]
        text_write = stream.write
        return lambda b: text_write(b.decode())
    return stream.write  # type: ignore[return-value]


def run_compute(
    stream_in: IO[bytes] | IO[str],
    stream_out: IO[bytes] | IO[str],
    theta_default: Theta | None = None,
    *,
    checks: ServiceChecks | None = None,
    read_bytes: int = READ_BYTES,
) -> int:
    """Compute every case of `stream_in` into `stream_out`; 0 if all computed, else 1.

    `checks`: the service's validation (what the service would do); None: the raw kernel.
    `read_bytes`: the size of the blocks JSON lines are read in.
    `theta_default` must already be valid (see `config.load_theta`); it supplies every tunable
    a case's `theta` does not set.
    """
    default = DEFAULT_THETA if theta_default is None else theta_default
    runner = CaseRunner(_binary_writer(stream_out), default, checks)
    reader = _binary_reader(stream_in)
    # Find the first non-blank byte to choose array vs JSON lines.
    head = b""
    while True:
        block = reader.read(read_bytes)
        if not block:
            break
        head += block
        if head.lstrip():
            break
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    stripped = head.lstrip()
    if stripped.startswith(b"["):
        _run_array(head + reader.read(), runner)
    elif stripped:
        _run_lines(_blocks(head, reader, read_bytes), runner)
    runner.flush()
    flush = getattr(stream_out, "flush", None)
    if flush is not None:
        flush()
    return 1 if runner.rejected else 0
