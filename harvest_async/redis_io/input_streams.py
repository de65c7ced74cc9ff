"""Following the input streams (INPUT_STREAMS): XREAD BLOCK from the last entry read.

An entry's `symbol` field names a symbol whose inputs changed: `Changed(symbol,
"stream")`. The last ID read per stream is kept in a dict that outlives the connection
(and, on a cluster, the node): a reconnect resumes after it, so entries added meanwhile
are still read, and is a gap all the same (entries may have been trimmed, or lost with a
server that failed before replicating them). A stream whose newest entry is older than
the ID kept (a replica promoted without our last entries, a server restarted empty) is
resumed from its newest entry, so the entries appended next are not skipped.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import anyio
from redis import exceptions as rexc

from harvest_async.backoff import Backoff, DenialLog, RedisOutage
from harvest_async.core.ports import Changed, Event, Gap
from harvest_async.errors import PermissionDenied
from harvest_async.redis_io.client import REDIS_ERRORS, REDIS_OR_REPLY_ERRORS, client_for, refused

__all__ = ["REDIRECTS", "STREAM_BLOCK_MS", "StreamFollower", "stream_id"]

log = logging.getLogger(__name__)

STREAM_BLOCK_MS = 5000
# a cluster node's replies meaning "this stream is served elsewhere (or not yet)"
REDIRECTS = (rexc.AskError, rexc.TryAgainError, rexc.ClusterDownError)


def stream_id(text: str) -> tuple[int, int]:
    """A stream entry ID ("ms-seq") as a comparable pair."""
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class StreamFollower:
    """XREAD BLOCK over `streams` on one server, on a client of its own (its socket
    timeout longer than the block time). On one server it runs until cancelled; on a
    cluster node (`redirects=True`) it returns when the node says a stream is served
    elsewhere (MOVED, ASK, TRYAGAIN, CLUSTERDOWN), for its caller to find the node."""

    def __init__(
        self,
        url: str,
        password: str | None,
        streams: Sequence[str],
        *,
        last: dict[str, str],
        outage: RedisOutage,
        denials: DenialLog,
        redirects: bool = False,
        on_failure: Callable[[], None] = lambda: None,
    ) -> None:
        self.url = url
        self.password = password
        self.streams = tuple(streams)
        self.last = last  # stream -> the last ID read: shared with the caller
        self.outage = outage
        self.denials = denials
        self.redirects = redirects
        self.on_failure = on_failure  # every failed attempt (a cluster: watch the map)

    async def run(self, emit: Callable[[Event], None]) -> None:
        backoff = Backoff(first=0.2, cap=10.0)
        while True:
            client = client_for(
                self.url,
                self.password,
                socket_timeout=STREAM_BLOCK_MS / 1000 + 5,
                name="harvest-async-streams",
            )
            try:
                await self._resume_points(client)
                await client.ping()  # reachable again: no need to wait for an entry to say so
                if backoff.attempts:
                    backoff.reset()
                    self.outage.recovered("input streams")
                while True:
                    after = {stream: self.last[stream] for stream in self.streams}
                    reply: Any = await client.xread(after, block=STREAM_BLOCK_MS, count=1000)  # type: ignore[arg-type]
                    for stream, entries in reply or []:
                        for entry_id, fields in entries:
                            self.last[stream] = entry_id
                            symbol = fields.get("symbol")
                            if symbol:
                                emit(Changed(symbol, "stream"))
            except REDIRECTS as exc:
                if not self.redirects:
                    raise
                log.debug("input streams %s: %s: %s", self.streams, type(exc).__name__, exc)
                return  # the caller reads the slot map again and follows the stream
            except REDIS_OR_REPLY_ERRORS as exc:
                self.on_failure()
                error = refused("reading input streams", exc)
                if isinstance(error, PermissionDenied):
                    self.denials.denied(error)
                else:
                    self.outage.failed("input streams", str(exc))
                emit(Gap("stream reconnect"))
                await self.outage.pause(backoff.next_delay())
            finally:
                with anyio.CancelScope(shield=True):
                    with contextlib.suppress(*REDIS_ERRORS):
                        await client.aclose()

    async def _resume_points(self, client: Any) -> None:
        """The ID to read after, per stream: the newest entry at the first connection,
        else the last one read, unless the stream's newest entry is older than that."""
        for stream in self.streams:
            newest: Any = await client.xrevrange(stream, count=1)
            top = newest[0][0] if newest else "0-0"
            kept = self.last.get(stream)
            if kept is None or stream_id(top) < stream_id(kept):
                self.last[stream] = top
