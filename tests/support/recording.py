"""`record` running in the background of a test, for as long as a block lasts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import anyio

from harvest_async.config import Settings
from harvest_async.replay.recorder import Recorder, record

__all__ = ["recording"]


@asynccontextmanager
async def recording(
    settings: Settings, path: Path, *, ready_within: float = 5.0
) -> AsyncIterator[Recorder]:
    """The recorder once its first snapshot is written (within `ready_within` seconds);
    when the block ends, the recording stops and its end marker is written."""
    holder: list[Recorder] = []
    ready = anyio.Event()

    async def on_ready(recorder: Recorder) -> None:
        holder.append(recorder)
        ready.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(record, settings, str(path), handle_signals=False, on_ready=on_ready))
        with anyio.fail_after(ready_within):
            await ready.wait()
        yield holder[0]
        tg.cancel_scope.cancel()
