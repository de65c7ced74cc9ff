"""The only place the service reads time. Everything else gets a Clock injected.

anyio is imported where it is used, so that reading the time (`wall_time`, e.g. in the
`compute` command) does not import the event-loop machinery.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import anyio


class Clock(Protocol):
    def now(self) -> float:
        """Epoch seconds (wall time: outputs carry it and input ages are measured with it)."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once now() >= deadline (or a little before, on a wall-clock step)."""
        ...

    async def wait(self, event: anyio.Event, deadline: float | None) -> None:
        """Return when `event` is set or `deadline` (None: never) has come."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        import anyio.lowlevel  # noqa: PLC0415 - see the module docstring

        delay = deadline - time.time()
        if delay > 0:
            await anyio.sleep(delay)
        else:
            await anyio.lowlevel.checkpoint()

    async def wait(self, event: anyio.Event, deadline: float | None) -> None:
        import anyio  # noqa: PLC0415 - see the module docstring

        if deadline is None:
            await event.wait()
            return
        with anyio.move_on_after(max(0.0, deadline - time.time())):
            await event.wait()


class FakeClock:
    """Virtual time for tests and replay: time moves only when told to.

    `sleep_until` waits until `advance`/`set` moves time past the deadline, so component
    tests can drive floors and heartbeats without sleeping.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        import anyio  # noqa: PLC0415 - see the module docstring

        self._now = start
        self._changed = anyio.Event()

    def now(self) -> float:
        return self._now

    def set(self, value: float) -> None:
        import anyio  # noqa: PLC0415 - see the module docstring

        if value < self._now:
            raise ValueError(f"FakeClock cannot go back: {value} < {self._now}")
        self._now = value
        self._changed.set()
        self._changed = anyio.Event()

    def advance(self, seconds: float) -> None:
        self.set(self._now + seconds)

    async def sleep_until(self, deadline: float) -> None:
        while self._now < deadline:
            await self._changed.wait()

    async def wait(self, event: anyio.Event, deadline: float | None) -> None:
        import anyio  # noqa: PLC0415 - see the module docstring

        while not event.is_set() and (deadline is None or self._now < deadline):
            changed = self._changed
            async with anyio.create_task_group() as tg:

                async def _event() -> None:
                    await event.wait()
                    tg.cancel_scope.cancel()

                async def _time(changed: anyio.Event = changed) -> None:
                    await changed.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(_event)
                tg.start_soon(_time)


def wall_time() -> float:
    """Epoch seconds now, for one-shot tools that have no Clock (the `compute` command)."""
    return time.time()


def monotonic() -> float:
    """Monotonic seconds for measuring durations (latency, timeouts), never for outputs."""
    return time.monotonic()
