"""Recordings of input changes: a versioned JSON-lines format (docs/recording.md).

A recording is a header line followed by one line per event:

* ``set``     one input hash after a change (the whole hash);
* ``delete``  one input key removed (DEL or expiry);
* ``snapshot`` the complete input state at that moment (after a gap: a reconnect);
* ``end``     the recorder stopped cleanly (its absence means the file may be cut short).

Lines are encoded and decoded with msgspec; a file whose name ends in ``.gz`` is written
gzip-compressed, and a gzip file is recognised by its magic bytes when read. Pure: no
Redis, no clock. Decoding errors name the file and the line.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import msgspec

from harvest_async import __version__

__all__ = [
    "FORMAT",
    "KINDS",
    "VERSION",
    "Delete",
    "End",
    "Header",
    "Line",
    "Prefixes",
    "RecordingError",
    "RecordingReader",
    "RecordingWriter",
    "Set",
    "Snapshot",
    "SymbolState",
    "open_output",
    "read_all",
    "write_recording",
]

FORMAT = "harvest-async-recording"
VERSION = 1

Kind = Literal["marketstate", "risk", "position"]
KINDS: tuple[Kind, ...] = ("marketstate", "risk", "position")
Fields = dict[str, str]
Symbol = Annotated[str, msgspec.Meta(min_length=1)]
# JSON has no NaN/inf, so a decoded time is always finite
Time = Annotated[float, msgspec.Meta(ge=0.0)]

_CHUNK = 1 << 20  # bytes read and decoded at a time: memory does not grow with the file


class Prefixes(msgspec.Struct, frozen=True, kw_only=True):
    """The key prefixes the inputs were read under (informational; symbols are explicit)."""

    marketstate: str = "quantum:marketstate:"
    risk: str = "quantum:risk:proposal:"
    position: str = "quantum:state:positions:"


class SymbolState(msgspec.Struct, omit_defaults=True):
    """One symbol's three input hashes; None (omitted) = the key is absent."""

    marketstate: Fields | None = None
    risk: Fields | None = None
    position: Fields | None = None

    def get(self, kind: str) -> Fields | None:
        value: Fields | None = getattr(self, kind)
        return value


class Header(msgspec.Struct, kw_only=True, omit_defaults=True):
    format: str
    version: int
    start: Time  # epoch seconds of the initial state (replay starts its clock here)
    created_by: str = ""
    source: str = ""  # where it was recorded (a Redis URL without credentials, a generator)
    prefixes: Prefixes = Prefixes()
    symbols: list[Symbol] | None = None  # None: every symbol seen
    snapshot: dict[Symbol, SymbolState] = {}
    meta: dict[str, str] = {}


class Set(msgspec.Struct, tag="set", tag_field="op"):
    at: Time
    kind: Kind
    symbol: Symbol
    fields: Annotated[Fields, msgspec.Meta(min_length=1)]


class Delete(msgspec.Struct, tag="delete", tag_field="op"):
    at: Time
    kind: Kind
    symbol: Symbol


class Snapshot(msgspec.Struct, tag="snapshot", tag_field="op"):
    """The complete input state at `at`: keys not listed are absent."""

    at: Time
    reason: str
    state: dict[Symbol, SymbolState]


class End(msgspec.Struct, tag="end", tag_field="op"):
    at: Time
    reason: str = "stopped"
    changes: int | None = None  # the number of set/delete lines, checked when reading


Line = Set | Delete | Snapshot | End


class _Probe(msgspec.Struct):
    format: Any = None
    version: Any = None


class RecordingError(Exception):
    """A recording cannot be read: the message names the file and, when known, the line."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line
        self.reason = message


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
            block = self._read(_CHUNK, line=1)
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
            block = self._read(_CHUNK, line=self.lines + 1)
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


def open_output(path: str | os.PathLike[str], *, compress: bool | None = None) -> io.BufferedIOBase:
    """A binary file for writing; gzip-compressed (reproducibly: no name, mtime 0) when
    `compress` is true, or by default when the name ends in `.gz`."""
    name = os.fspath(path)
    raw = open(name, "wb")  # noqa: SIM115 - returned to the caller
    if compress if compress is not None else name.endswith(".gz"):
        return _GzipWriter(raw)
    return raw


class _GzipWriter(gzip.GzipFile):
    """gzip around a file it owns (closes it too); no name and mtime 0 in the header, so
    the same lines give the same bytes."""

    def __init__(self, raw: io.BufferedIOBase) -> None:
        super().__init__(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
        self._owned = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._owned.close()


class RecordingWriter:
    """Writes a recording line by line; `close()` appends the end marker.

    With `atomic=True` the lines go to a hidden temporary file next to `path`, renamed
    over it only by `close()`; `abort()` removes it.
    """

    def __init__(
        self, path: str | os.PathLike[str], header: Header, *, atomic: bool = False
    ) -> None:
        self.target = Path(path)
        self.path = self.target.with_name(f".{self.target.name}.partial") if atomic else self.target
        self._file = open_output(self.path, compress=self.target.name.endswith(".gz"))
        self._buf = io.BufferedWriter(_Passthrough(self._file), buffer_size=1 << 16)
        self._encoder = msgspec.json.Encoder()
        self._atomic = atomic
        self.header = header
        self.changes = 0
        self.snapshots = 0
        self.last_at = header.start
        self.symbols: set[str] = set(header.snapshot)
        self._closed = False
        self._write(header)

    def _write(self, obj: msgspec.Struct) -> None:
        self._buf.write(self._encoder.encode(obj))
        self._buf.write(b"\n")

    def _time(self, at: float) -> float:
        # never backwards (a wall-clock step must not make the file invalid)
        at = max(at, self.last_at)
        self.last_at = at
        return at

    def set(self, at: float, kind: Kind, symbol: str, fields: Fields) -> None:
        if not fields:
            self.delete(at, kind, symbol)
            return
        self._write(Set(self._time(at), kind, symbol, fields))
        self.changes += 1
        self.symbols.add(symbol)

    def delete(self, at: float, kind: Kind, symbol: str) -> None:
        self._write(Delete(self._time(at), kind, symbol))
        self.changes += 1
        self.symbols.add(symbol)

    def snapshot(self, at: float, reason: str, state: dict[str, SymbolState]) -> None:
        self._write(Snapshot(self._time(at), reason, state))
        self.snapshots += 1
        self.symbols.update(state)

    def flush(self) -> None:
        """Push buffered lines to disk (a gzip file stays decodable up to here)."""
        self._buf.flush()
        inner = self._file
        if isinstance(inner, gzip.GzipFile):
            inner.flush(zlib.Z_SYNC_FLUSH)
        else:
            inner.flush()

    def close(self, *, end_at: float | None = None, reason: str = "stopped") -> None:
        if self._closed:
            return
        at = self._time(self.last_at if end_at is None else end_at)
        self._write(End(at, reason, self.changes))
        self._buf.flush()
        self._file.close()
        self._closed = True
        if self._atomic:
            os.replace(self.path, self.target)

    def abort(self) -> None:
        """Stop without an end marker; an atomic writer removes its temporary file."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError, ValueError):
            self._buf.flush()
        with contextlib.suppress(OSError):
            self._file.close()
        if self._atomic:
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _Passthrough(io.RawIOBase):
    """Lets io.BufferedWriter batch small writes in front of a (gzip) file."""

    def __init__(self, inner: io.BufferedIOBase) -> None:
        self._inner = inner

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._inner.write(data)
        return len(data)


class WriteLike(Protocol):
    """One input change (the shape of `simulate.InputWrite`)."""

    @property
    def at(self) -> float: ...
    @property
    def kind(self) -> str: ...
    @property
    def symbol(self) -> str: ...
    @property
    def op(self) -> str: ...
    @property
    def fields(self) -> dict[str, str]: ...


def _kind(value: str) -> Kind:
    if value not in KINDS:
        raise ValueError(f"unknown input kind {value!r}")
    return value


def write_recording(
    path: str | os.PathLike[str],
    *,
    start: float,
    initial: Iterable[WriteLike],
    changes: Iterable[WriteLike],
    end_at: float | None = None,
    source: str = "",
    meta: dict[str, str] | None = None,
    prefixes: Prefixes | None = None,
    symbols: list[str] | None = None,
) -> RecordingWriter:
    """A recording from generated writes: `initial` becomes the header's snapshot (later
    writes of one key win), `changes` the set/delete lines. Returns the closed writer."""
    snapshot: dict[str, SymbolState] = {}
    for write in initial:
        state = snapshot.setdefault(write.symbol, SymbolState())
        setattr(state, _kind(write.kind), dict(write.fields) if write.op == "set" else None)
    header = Header(
        format=FORMAT,
        version=VERSION,
        start=start,
        created_by=f"harvest-async {__version__}",
        source=source,
        prefixes=prefixes or Prefixes(),
        symbols=symbols,
        snapshot={s: snapshot[s] for s in sorted(snapshot)},
        meta=meta or {},
    )
    writer = RecordingWriter(path, header, atomic=True)
    try:
        for write in changes:
            kind = _kind(write.kind)
            if write.op == "delete":
                writer.delete(write.at, kind, write.symbol)
            elif write.op == "set":
                writer.set(write.at, kind, write.symbol, dict(write.fields))
            else:
                raise ValueError(f"unknown operation {write.op!r}")
        writer.close(end_at=end_at, reason="generated")
    except BaseException:
        writer.abort()
        raise
    return writer
