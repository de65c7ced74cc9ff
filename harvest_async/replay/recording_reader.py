"""Reading recordings (docs/recording.md): streamed in blocks; errors name file and line."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import zlib
from collections.abc import Iterator
from typing import Any

import msgspec

from harvest_async.replay.format import (
    FORMAT,
    VERSION,
    Delete,
    End,
    Header,
    Line,
    RecordingError,
    Set,
)

__all__ = ["RecordingReader", "read_all"]


class _Probe(msgspec.Struct):
    format: Any = None
    version: Any = None


def _describe(exc: Exception) -> str:
    text = str(exc)
    if text.startswith("Input data was truncated"):
        return "the line is cut short (truncated JSON)"
    if text.startswith("JSON is malformed"):
        return f"not valid JSON ({text})"
    return text


_LINE_DECODER = msgspec.json.Decoder(Line)
_HEADER_DECODER = msgspec.json.Decoder(Header)
_PROBE_DECODER = msgspec.json.Decoder(_Probe)

_READ_BYTES = 1 << 20  # bytes read and decoded at a time: memory does not grow with the file


class RecordingReader:
    """Streams a recording: `header`, then `batches()` of decoded lines.

    Memory is bounded by the chunk size, not the file. Every problem raises
    `RecordingError` with the line number: bad JSON, a field of the wrong type, time going
    backwards, data after the end marker, an end marker whose change count disagrees.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._raw = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise RecordingError(self.path, None, f"cannot open: {exc.strerror or exc}") from None
        self.size = os.fstat(self._raw.fileno()).st_size
        magic = self._raw.read(2)
        self._raw.seek(0)
        self.compressed = magic == b"\x1f\x8b"
        self._stream: io.BufferedIOBase = (
            gzip.GzipFile(fileobj=self._raw, mode="rb") if self.compressed else self._raw
        )
        self.end: End | None = None
        self.changes = 0  # set/delete lines read so far
        self.lines = 1  # lines consumed so far (the header is line 1)
        self.last_at = 0.0
        try:
            self.header = self._read_header()
        except BaseException:
            self.close()
            raise
        self.last_at = self.header.start

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._stream.close()
        with contextlib.suppress(OSError):
            self._raw.close()

    def __enter__(self) -> RecordingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def progress(self) -> float:
        """Fraction of the (compressed) file consumed so far, for a progress bar."""
        if self.size <= 0:
            return 1.0
        try:
            return min(1.0, self._raw.tell() / self.size)
        except (OSError, ValueError):
            return 0.0

    # -- reading -----------------------------------------------------------------------
    def _read(self, n: int, *, line: int) -> bytes:
        try:
            return self._stream.read(n)
        except EOFError:
            raise RecordingError(
                self.path,
                line,
                "the compressed file ends early (truncated: was the recorder killed?)",
            ) from None
        except (OSError, zlib.error) as exc:
            raise RecordingError(self.path, line, f"cannot decompress: {exc}") from None

    def _read_header(self) -> Header:
        first = b""
        self._leftover = b""
        while True:
            block = self._read(_READ_BYTES, line=1)
            if not block:
                break
            cut = block.find(b"\n")
            if cut >= 0:
                first += block[:cut]
                self._leftover = block[cut + 1 :]
                break
            first += block
        if not first.strip():
            raise RecordingError(self.path, 1, "empty file: not a harvest-async recording")
        try:
            probe = _PROBE_DECODER.decode(first)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise RecordingError(
                self.path, 1, "not a harvest-async recording (the first line is not a JSON object)"
            ) from None
        if probe.format != FORMAT:
            raise RecordingError(
                self.path,
                1,
                f"not a harvest-async recording (format is {probe.format!r}, expected {FORMAT!r})",
            )
        version = probe.version
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise RecordingError(self.path, 1, f"invalid format version {version!r}")
        if version > VERSION:
            raise RecordingError(
                self.path,
                1,
                f"recording format version {version} is newer than this harvest-async "
                f"supports (version {VERSION}); upgrade harvest-async to read it",
            )
        try:
            return _HEADER_DECODER.decode(first)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise RecordingError(self.path, 1, f"bad header: {_describe(exc)}") from None

    def batches(self) -> Iterator[list[Line]]:
        """Decoded lines after the header, a chunk at a time, validated in order."""
        leftover = self._leftover
        self._leftover = b""
        eof = False
        while not eof:
            block = self._read(_READ_BYTES, line=self.lines + 1)
            if block:
                data = leftover + block
                cut = data.rfind(b"\n")
                if cut < 0:
                    leftover = data
                    continue
                part, leftover = data[: cut + 1], data[cut + 1 :]
            else:
                eof = True
                part, leftover = leftover, b""
                if not part.strip():
                    break
            yield self._decode(part)
        end = self.end
        if end is not None and end.changes is not None and end.changes != self.changes:
            raise RecordingError(
                self.path,
                self.lines,
                f"the end marker counts {end.changes} changes but the file holds "
                f"{self.changes}: lines are missing",
            )

    def _decode(self, part: bytes) -> list[Line]:
        first_line = self.lines + 1
        try:
            items: list[Line] = _LINE_DECODER.decode_lines(part)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self._locate_error(part, first_line)
            raise  # pragma: no cover - _locate_error always raises
        nlines = part.count(b"\n") + (0 if part.endswith(b"\n") else 1)
        last = self.last_at
        changes = 0
        for i, item in enumerate(items):
            if self.end is not None:
                raise RecordingError(
                    self.path, self._line_of(part, first_line, i), "data after the end marker"
                )
            at = item.at
            if at < last:
                raise RecordingError(
                    self.path,
                    self._line_of(part, first_line, i),
                    f"time goes backwards ({at!r} < {last!r})",
                )
            last = at
            kind = type(item)
            if kind is Set or kind is Delete:
                changes += 1
            elif kind is End:
                self.end = item  # type: ignore[assignment]
        self.last_at = last
        self.changes += changes
        self.lines += nlines
        return items

    def _line_of(self, part: bytes, first_line: int, index: int) -> int:
        """Line number of the index-th non-blank line in `part`."""
        seen = -1
        for offset, raw in enumerate(part.split(b"\n")):
            if raw.strip():
                seen += 1
                if seen == index:
                    return first_line + offset
        return first_line  # pragma: no cover - index always exists

    def _locate_error(self, part: bytes, first_line: int) -> None:
        for offset, raw in enumerate(part.split(b"\n")):
            if not raw.strip():
                continue
            try:
                _LINE_DECODER.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise RecordingError(self.path, first_line + offset, _describe(exc)) from None
        raise RecordingError(self.path, first_line, "cannot decode")  # pragma: no cover


def read_all(path: str | os.PathLike[str]) -> tuple[Header, list[Line]]:
    """The whole recording in memory (tests and small files)."""
    with RecordingReader(path) as reader:
        lines: list[Line] = []
        for batch in reader.batches():
            lines.extend(batch)
        return reader.header, lines
