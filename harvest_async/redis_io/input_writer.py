"""Writing input hashes the way the upstream producers do (the simulator, `replay --into`).

A test and demo tool, never the service's own path: the service only reads inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from harvest_async.core.keys import Keys
from harvest_async.redis_io.client import Client, redis_errors

__all__ = ["InputWrite", "InputWriter"]


class InputWrite(Protocol):
    """One input change: `op` "set" (the whole hash) or "delete"."""

    @property
    def kind(self) -> str: ...
    @property
    def symbol(self) -> str: ...
    @property
    def op(self) -> str: ...
    @property
    def fields(self) -> dict[str, str]: ...


class InputWriter:
    """Pipelines writes; remembers each key's field names to drop fields a rewrite lacks.

    With `streams` (kind -> stream name), every change is also appended to its kind's
    stream in the same transaction, the way producers that keep history do: `symbol`, then
    the whole hash (or `op=delete`), the entry shape `record --from-streams` reads
    (docs/recording.md). The entries of one `write` share the ID's millisecond
    (`stream_at`, else the server's clock), so a conversion sees them as one change.

    `transaction=False` (a Redis Cluster, `client` its redis-py cluster client): a batch's
    keys usually span slots, which one MULTI/EXEC cannot (CROSSSLOT), so the batch goes as
    one pipeline per node, in parallel; a key's own commands still go in order on one
    connection, back to back, but the batch is not atomic.
    """

    def __init__(
        self,
        client: Client,
        keys: Keys,
        *,
        ttl: Mapping[str, int | None],
        label: str = "writing inputs",
        streams: Mapping[str, str] | None = None,
        transaction: bool = True,
    ) -> None:
        self.label = label  # what a failure says it was doing
        self.transaction = transaction
        self.client = client
        self.keys = keys
        self.ttl = ttl
        self.streams = dict(streams or {})
        self.shapes: dict[str, frozenset[str]] = {}
        self._stream_ms = 0  # explicit entry IDs never go backwards

    def _entry_id(self, stream_at: float | None) -> str:
        if stream_at is None:
            return "*"
        self._stream_ms = max(self._stream_ms, int(stream_at * 1000))
        return f"{self._stream_ms}-*"

    async def write(self, writes: Sequence[InputWrite], *, stream_at: float | None = None) -> None:
        if not writes:
            return
        shapes = self.shapes
        key_for = self.keys.input_key
        streams = self.streams
        entry_id = self._entry_id(stream_at) if streams else "*"
        # one MULTI/EXEC per batch: a reader never sees a hash between DEL and HSET (on a
        # cluster per-node pipelines: see the class)
        async with (
            redis_errors(self.label, replies=False),
            self.client.pipeline(transaction=self.transaction) as pipe,
        ):
            for w in writes:
                key = key_for(w.kind, w.symbol)
                stream = streams.get(w.kind)
                if stream is not None:
                    entry = {"symbol": w.symbol}
                    entry.update({"op": "delete"} if w.op == "delete" else w.fields)
                    pipe.xadd(stream, entry, id=entry_id)  # type: ignore[arg-type]
                if w.op == "delete":
                    pipe.delete(key)
                    shapes[key] = frozenset()
                    continue
                names = frozenset(w.fields)
                before = shapes.get(key)
                if before is None:
                    pipe.delete(key)  # first write of this run: start from a clean hash
                elif before - names:
                    pipe.hdel(key, *sorted(before - names))
                shapes[key] = names
                pipe.hset(key, mapping=w.fields)  # type: ignore[arg-type]
                ttl = self.ttl.get(w.kind)
                if ttl is not None:
                    pipe.expire(key, ttl)
            await pipe.execute()
