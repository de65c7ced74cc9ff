"""Writing recordings (docs/recording.md): gzip by file name, an end marker on close."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import msgspec

from harvest_async import __version__
from harvest_async.replay.format import (
    FORMAT,
    KINDS,
    VERSION,
    Delete,
    End,
    Fields,
    Header,
    Kind,
    Prefixes,
    Set,
    Snapshot,
    SymbolState,
)

__all__ = ["RecordingWriter", "open_output", "write_recording"]


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
