"""Stopping on SIGTERM/SIGINT: one helper for the service and every long-running command."""

from __future__ import annotations

import signal
from collections.abc import Callable

import anyio

__all__ = ["cancel_on_signal"]


async def cancel_on_signal(
    scope: anyio.CancelScope,
    on_signal: Callable[[signal.Signals], None] | None = None,
) -> None:
    """Cancel `scope` at the first SIGTERM or SIGINT, after `on_signal(signum)`.

    Run it as a task of the group `scope` belongs to: cleanup then runs in the normal
    `finally` blocks of the cancelled tasks (shielded where it must finish)."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if on_signal is not None:
                on_signal(signum)
            scope.cancel()
            return
