"""Reading stream history: XINFO for a stream's extent, XRANGE in pages.

Used by `record --from-streams` (input streams), `export-audit` and `replay
--against-audit` (the audit stream). Memory is one page per stream, whatever the
history's length. Redis errors become the project's: unreachable or refused ->
RedisUnavailable; a key that is not a stream -> ConfigError naming it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from redis import exceptions as rexc

from harvest_async.config import Settings
from harvest_async.errors import ConfigError, RedisUnavailable
from harvest_async.redis_io.client import REDIS_ERRORS, Client, client_for
from harvest_async.redis_io.cluster.setup import cluster_client

__all__ = [
    "PAGE",
    "Entry",
    "StreamInfo",
    "cluster_history_client",
    "history_client",
    "stream_info",
    "xrange_field",
    "xrange_pages",
]

PAGE = 2000  # entries per XRANGE: one round trip per page, memory one page per stream

Entry = tuple[str, dict[str, str]]  # (entry ID, fields)


@dataclass(frozen=True, slots=True)
class StreamInfo:
    name: str
    exists: bool
    length: int = 0
    first_id: str | None = None
    last_id: str | None = None
    # entries ever appended (None: a server older than Redis 7 does not say)
    entries_added: int | None = 0

    @property
    def removed(self) -> bool | None:
        """Whether entries were removed (MAXLEN/MINID trimming, XDEL); None: unknown."""
        if self.entries_added is None:
            return None
        return self.entries_added > self.length


def _error(what: str, exc: BaseException) -> RedisUnavailable:
    return RedisUnavailable(f"{what}: {type(exc).__name__}: {exc}")


async def stream_info(client: Client, name: str, *, option: str) -> StreamInfo:
    """A stream's extent; `exists=False` for a missing key. ConfigError (naming `option`)
    if the key holds another type."""
    try:
        kind = str(await client.type(name))
        if kind == "none":
            return StreamInfo(name, exists=False)
        if kind != "stream":
            raise ConfigError(option, f"{name!r} is not a stream (it holds a {kind})")
        info: dict[str, Any] = await client.xinfo_stream(name)
    except REDIS_ERRORS as exc:
        raise _error(f"reading stream {name!r}", exc) from exc
    except rexc.ResponseError as exc:
        raise _error(f"reading stream {name!r} refused", exc) from exc
    first = info.get("first-entry")
    last = info.get("last-entry")
    added = info.get("entries-added")
    return StreamInfo(
        name,
        exists=True,
        length=int(info.get("length", 0)),
        first_id=first[0] if first else None,
        last_id=last[0] if last else None,
        entries_added=None if added is None else int(added),
    )


def history_client(url: str, password: str | None = None, *, name: str) -> Client:
    """A client for reading history: XRANGE replies come back unparsed (flat field
    lists), which `xrange_pages` turns into dicts at C speed (redis-py's own parser costs
    about as much as reading the reply)."""
    client = client_for(url, password, retries=3, name=name)
    client.set_response_callback("XRANGE", _unparsed)
    return client


def cluster_history_client(settings: Settings, *, name: str) -> Any:
    """`history_client` on a Redis Cluster: redis-py's cluster client, which sends each
    stream's XINFO and XRANGE to the node serving its key."""
    client = cluster_client(settings, name=name)
    client.set_response_callback("XRANGE", _unparsed)
    return client


def _unparsed(response: Any, **_options: Any) -> Any:
    return response


def _entries(page: Any) -> list[Entry]:
    """(ID, fields) pairs from a reply, parsed by redis-py or not (history_client)."""
    if page and not isinstance(page[0][1], dict):
        return [
            (entry_id, dict(zip(flat[::2], flat[1::2], strict=True))) for entry_id, flat in page
        ]
    return list(page)


def _field(flat: Any, name: str) -> str | None:
    """One field of an entry's flat [name, value, ...] list (or parsed dict)."""
    if isinstance(flat, dict):
        value: str | None = flat.get(name)
        return value
    for k in range(0, len(flat) - 1, 2):
        if flat[k] == name:
            found: str = flat[k + 1]
            return found
    return None


async def _pages(client: Client, name: str, start: str, end: str, count: int) -> AsyncIterator[Any]:
    lower = start
    while True:
        try:
            page: Any = await client.xrange(name, lower, end, count=count)
        except REDIS_ERRORS as exc:
            raise _error(f"reading stream {name!r}", exc) from exc
        except rexc.ResponseError as exc:
            raise _error(f"reading stream {name!r} refused", exc) from exc
        if not page:
            return
        yield page
        if len(page) < count:
            return
        lower = "(" + page[-1][0]  # exclusive: after the last entry read


async def xrange_pages(
    client: Client, name: str, start: str, end: str, *, count: int = PAGE
) -> AsyncIterator[list[Entry]]:
    """The entries from `start` to `end` (inclusive IDs, or `-`/`+`), `count` at a time."""
    async for page in _pages(client, name, start, end, count):
        yield _entries(page)


async def xrange_field(
    client: Client, name: str, start: str, end: str, field: str, *, count: int = PAGE
) -> AsyncIterator[list[tuple[str, str | None]]]:
    """(ID, one field's value) of the entries from `start` to `end`: a cheap scan."""
    async for page in _pages(client, name, start, end, count):
        yield [(entry_id, _field(flat, field)) for entry_id, flat in page]
