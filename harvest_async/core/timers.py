"""One deadline per symbol (a floor's trailing edge, a heartbeat, an input going stale),
kept in a heap with lazy deletion: moving a deadline later is O(1), earlier O(log n).

Pure. The engine owns one `Timers`; each symbol's slot (its `due` and the heap entry it
has) lives on the engine's per-symbol state, so a deadline costs no extra dict.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import Protocol

__all__ = ["Slot", "Timers"]


class Slot(Protocol):
    due: float | None  # the symbol's deadline (None: none)
    heap_at: float | None  # the earliest entry it has in the heap (None: none)


class Timers:
    def __init__(
        self,
        slot_of: Callable[[str], Slot | None],
        all_slots: Callable[[], Iterable[tuple[str, Slot]]],
    ) -> None:
        self._slot_of = slot_of
        self._all_slots = all_slots
        self._heap: list[tuple[float, str]] = []

    def set(self, symbol: str, slot: Slot, when: float | None, tracked: int) -> None:
        """The symbol's deadline is now `when` (None: no deadline)."""
        slot.due = when
        if when is not None and (slot.heap_at is None or when < slot.heap_at):
            heapq.heappush(self._heap, (when, symbol))
            slot.heap_at = when
            if len(self._heap) > 2 * tracked + 64:
                self._compact()

    def _compact(self) -> None:
        # Earlier deadlines leave the later entries they replace behind; under changes
        # faster than the floor that is heartbeat/floor entries per symbol. Drop them.
        heap = []
        for name, slot in self._all_slots():
            slot.heap_at = slot.due
            if slot.due is not None:
                heap.append((slot.due, name))
        heapq.heapify(heap)
        self._heap = heap

    def __len__(self) -> int:
        """Heap entries, stale ones included (what the memory bound is about)."""
        return len(self._heap)

    def next(self) -> float | None:
        """The earliest entry in the heap (maybe a stale one: due() then finds nothing)."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[str]:
        """The symbols whose deadline has come (each cleared)."""
        ready: list[str] = []
        heap = self._heap
        slot_of = self._slot_of
        while heap and heap[0][0] <= now:
            at, symbol = heapq.heappop(heap)
            slot = slot_of(symbol)
            if slot is None:
                continue
            if slot.heap_at == at:
                slot.heap_at = None
            due = slot.due
            if due is None:
                continue
            if due <= now:
                slot.due = None
                ready.append(symbol)
            elif slot.heap_at is None:
                heapq.heappush(heap, (due, symbol))
                slot.heap_at = due
        return ready
