"""Writing a Simulator's changes into Redis at a given rate, the way the producers do."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from harvest_async.clock import Clock
from harvest_async.core.keys import Keys
from harvest_async.redis_io.client import Client
from harvest_async.redis_io.input_writer import InputWriter
from harvest_async.tools.simulate.model import TTL_SEC, Simulator

__all__ = ["run_simulator"]


async def run_simulator(
    client: Client,
    keys: Keys,
    sim: Simulator,
    *,
    rate: float,
    duration: float | None,
    clock: Clock,
    initial: bool = True,
    tick: float | None = None,
    on_write: Callable[[int], None] | None = None,
    streams: Mapping[str, str] | None = None,
) -> int:
    """Write `sim`'s changes into Redis at `rate` changes/s for `duration` s (None: until
    cancelled); first the initial snapshot unless `initial=False`. Returns the number of
    hash writes (snapshot included); `on_write(n)` is called after each written batch.
    `streams` (kind -> stream name): also append each change there (InputWriter)."""
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    writer = InputWriter(client, keys, ttl=TTL_SEC, label="simulator write", streams=streams)
    written = 0
    if initial:
        snapshot = sim.initial()
        for start in range(0, len(snapshot), 5000):
            chunk = snapshot[start : start + 5000]
            await writer.write(chunk, stream_at=clock.now())
            written += len(chunk)
            if on_write is not None:
                on_write(len(chunk))
    step = tick if tick is not None else min(0.05, max(0.002, 1.0 / rate))
    max_batch = max(1, int(rate * 0.2))
    began = clock.now()
    emitted = 0
    total = None if duration is None else int(duration * rate)
    while True:
        now = clock.now()
        due = int((now - began) * rate) - emitted
        if total is not None:
            due = min(due, total - emitted)
        if due > 0:
            batch = sim.advance(now, min(due, max_batch))
            await writer.write(batch, stream_at=now)
            emitted += len(batch)
            written += len(batch)
            if on_write is not None:
                on_write(len(batch))
        if total is not None and emitted >= total:
            return written
        await clock.sleep_until(now + step)
