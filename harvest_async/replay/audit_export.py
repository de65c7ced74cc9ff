"""The audit stream as JSON lines: `export-audit` writes them, `replay --against-audit`
reads them (or the stream itself).

One line per stream entry: `{"id": "<entry ID>", "event": ..., <every field>}`, values
as the stream holds them (strings). A `replay` timeline (`replay --out`) has the same
shape without `id`, so it can stand in for an audit too. `.gz` is written by name and
recognised by content when read.
"""

from __future__ import annotations

import gzip
import io
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import IO

import msgspec

from harvest_async.clock import monotonic
from harvest_async.core.timefmt import iso_utc_ms
from harvest_async.errors import ConfigError, TimelineError
from harvest_async.redis_io.client import Client
from harvest_async.redis_io.streams import StreamInfo, stream_info, xrange_pages
from harvest_async.replay.stream_window import StreamBound, entry_key
from harvest_async.replay.timeline import atomic_output

__all__ = [
    "AuditEntry",
    "ExportStats",
    "audit_from_redis",
    "export_audit",
    "read_audit_file",
    "trim_note",
]

AuditEntry = tuple[str, dict[str, str]]  # (where: an entry ID or file:line, fields)


@dataclass(slots=True)
class ExportStats:
    path: str = ""
    stream: str = ""
    entries: int = 0
    first_id: str | None = None
    last_id: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.entries or self.first_id is None or self.last_id is None:
            return f"exported 0 entries of {self.stream} to {self.path}"
        first = iso_utc_ms(entry_key(self.first_id)[0] / 1000)
        last = iso_utc_ms(entry_key(self.last_id)[0] / 1000)
        return (
            f"exported {self.entries} entries of {self.stream} ({first} to {last}) to "
            f"{self.path} in {self.seconds:.1f} s"
        )


def trim_note(info: StreamInfo, since: float | None) -> str:
    """What to say when the audit stream no longer reaches back to `since`."""
    if not info.exists:
        return f"the audit stream {info.name!r} does not exist"
    if since is None or info.first_id is None:
        return ""
    first = entry_key(info.first_id)
    if first[0] / 1000 <= since or info.removed is False:
        return ""  # it reaches back, or it began later and nothing was ever trimmed
    return (
        f"the audit stream {info.name!r} starts at {iso_utc_ms(first[0] / 1000)} (entry "
        f"{info.first_id}), after {iso_utc_ms(since)}: older entries were trimmed away"
    )


async def audit_from_redis(
    client: Client, stream: str, since: StreamBound | None, until: StreamBound | None
) -> AsyncIterator[list[AuditEntry]]:
    """The audit stream's entries between the bounds, a page at a time."""
    start = "-" if since is None else since.xrange_start()
    end = "+" if until is None else until.xrange_end()
    async for page in xrange_pages(client, stream, start, end):
        yield page


async def export_audit(
    client: Client,
    stream: str,
    out: str | None,
    *,
    since: StreamBound | None = None,
    until: StreamBound | None = None,
    symbols: frozenset[str] | None = None,
) -> ExportStats:
    """Write the entries between the bounds to `out` (None or '-': stdout); a file
    appears only when complete."""
    if since is not None and until is not None and until.end_key() < since.start_key():
        raise ConfigError("--until", f"{until.text!r} is before --since {since.text!r}")
    began = monotonic()
    info = await stream_info(client, stream, option="--stream")
    stats = ExportStats(path=out or "-", stream=stream)
    note = trim_note(info, None if since is None else since.time)
    if note:
        stats.notes.append(note)
    if out is None or out == "-":
        await _write(
            client, stream, sys.stdout.buffer, (since, until), symbols=symbols, stats=stats
        )
        sys.stdout.flush()
    else:
        with atomic_output(out) as sink:
            await _write(client, stream, sink, (since, until), symbols=symbols, stats=stats)
    stats.seconds = monotonic() - began
    return stats


async def _write(
    client: Client,
    stream: str,
    sink: IO[bytes],
    window: tuple[StreamBound | None, StreamBound | None],
    *,
    symbols: frozenset[str] | None,
    stats: ExportStats,
) -> None:
    encode = msgspec.json.Encoder().encode
    write = sink.write
    async for page in audit_from_redis(client, stream, *window):
        chunk: list[bytes] = []
        for entry_id, fields in page:
            if symbols is not None and fields.get("symbol") not in symbols:
                continue
            chunk.append(encode({"id": entry_id, **fields}))
            if stats.first_id is None:
                stats.first_id = entry_id
            stats.last_id = entry_id
        if chunk:
            chunk.append(b"")
            write(b"\n".join(chunk))
            stats.entries += len(chunk) - 1


_LINE = msgspec.json.Decoder(dict[str, str | int | float | bool | None])


def read_audit_file(path: str | os.PathLike[str]) -> Iterator[AuditEntry]:
    """The entries of an exported audit (or a replay timeline), in file order; each named
    by its `id` or, without one, `file:line`. TimelineError names the line of a bad one."""
    name = os.fspath(path)
    try:
        raw = open(name, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise TimelineError(f"{name}: cannot read: {exc.strerror or exc}") from None
    with raw:
        compressed = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream: io.BufferedIOBase = gzip.GzipFile(fileobj=raw) if compressed else raw
        number = 0
        try:
            for number, line in enumerate(stream, 1):
                if not line.strip():
                    continue
                try:
                    decoded = _LINE.decode(line)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise TimelineError(f"{name}:{number}: {exc}") from None
                fields = {k: "" if v is None else str(v) for k, v in decoded.items()}
                where = fields.pop("id", "") or f"{name}:{number}"
                yield where, fields
        except (OSError, EOFError) as exc:
            raise TimelineError(f"{name}:{number + 1}: cannot decompress: {exc}") from None
