"""In-memory adapters for tests: the ports of `core.ports` without Redis.

Shipped with the package (as httpcore ships its mock backend) so that tests, here and in
code built on harvest-async, drive the real live runner on virtual time::

    clock = FakeClock()
    store = MemoryStore({"BTCUSDT": SymbolInputs("BTCUSDT", market, risk, position)})
    sink = MemorySink(store)
    source = ManualSource()
    runner = Runner(engine, store, sink, clock, symbols=None, reconcile_every=60.0)
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run, source)   # the startup pass is written
        store.put("BTCUSDT", "position", {...})
        source.changed("BTCUSDT")
        clock.advance(10.0)
        await runner.wait_idle()             # every event and due timer handled
        sink.audit                           # what the audit stream would hold

* `MemoryStore` (an `InputReader`): input hashes and proposal hashes in dicts;
* `MemorySink` (a `Sink`): applies each write to the store's proposal hashes and its
  audit list all together or not at all, and can refuse, fail or lose the outcome of a
  write on request, the way Redis does;
* `ManualSource` (a `ChangeSource`): the test emits the notifications (`changed`, `gap`);
* `FakeClock`: time moves only when the test says so.

Imports the core, the clock and anyio; never redis (the import contracts enforce it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import anyio
import anyio.lowlevel

from harvest_async.clock import FakeClock
from harvest_async.core.input_hashes import Hash, SymbolInputs
from harvest_async.core.keys import Keys
from harvest_async.core.ports import Changed, Event, Gap, Output, PublishOut, Started
from harvest_async.errors import RedisUnavailable, WriteRefused, WriteUncertain

__all__ = ["KINDS", "FakeClock", "ManualSource", "MemorySink", "MemoryStore"]

# the three input hashes of a symbol, in SymbolInputs' order
KINDS = ("marketstate", "risk", "position")


class MemoryStore:
    """The input hashes and the proposal hashes, as a Redis database would hold them.

    Implements `core.ports.InputReader`. `inputs` and `proposals` are plain dicts the
    test may read and change at will; `fetches` lists the symbols of every fetch, and
    `proposal_reads` those of every read of the proposal hashes (None: all of them).
    """

    def __init__(
        self,
        inputs: Mapping[str, SymbolInputs] | Iterable[SymbolInputs] = (),
        *,
        proposals: Mapping[str, Hash] | None = None,
    ) -> None:
        items = inputs.values() if isinstance(inputs, Mapping) else inputs
        self.inputs: dict[str, SymbolInputs] = {i.symbol: i for i in items}
        self.proposals: dict[str, Hash] = dict(proposals or {})
        self.fetches: list[list[str]] = []
        self.kind_fetches: list[list[int] | None] = []  # per fetch: the kinds asked (None: all)
        self.proposal_reads: list[list[str] | None] = []

    # -- what producers do --------------------------------------------------------------
    def set_inputs(self, inputs: SymbolInputs) -> None:
        """Replace a symbol's three input hashes (absent ones: no key)."""
        if inputs.marketstate is None and inputs.risk is None and inputs.position is None:
            self.inputs.pop(inputs.symbol, None)
        else:
            self.inputs[inputs.symbol] = inputs

    def put(self, symbol: str, kind: str, fields: Hash | None) -> None:
        """Replace one input hash (`kind`: marketstate, risk or position); None deletes
        it. Notifying is the change source's part (`ManualSource.changed`)."""
        row = list(self._row(symbol))
        row[KINDS.index(kind)] = None if fields is None else dict(fields)
        self.set_inputs(SymbolInputs(symbol, *row))

    def _row(self, symbol: str) -> tuple[Hash | None, Hash | None, Hash | None]:
        found = self.inputs.get(symbol)
        if found is None:
            return (None, None, None)
        return (found.marketstate, found.risk, found.position)

    # -- InputReader ----------------------------------------------------------------------
    async def fetch(
        self, symbols: Sequence[str], kinds: Sequence[int] | None = None
    ) -> list[SymbolInputs]:
        """The hashes asked for (`kinds`: per symbol, core.rounds.KIND_BITS; the others
        None, as the live reader leaves them); `kind_fetches` records what was asked."""
        self.fetches.append(list(symbols))
        self.kind_fetches.append(None if kinds is None else list(kinds))
        await anyio.lowlevel.checkpoint()
        found = [self.inputs.get(symbol) or SymbolInputs(symbol) for symbol in symbols]
        if kinds is None:
            return found
        return [
            SymbolInputs(
                item.symbol,
                item.marketstate if mask & 1 else None,
                item.risk if mask & 2 else None,
                item.position if mask & 4 else None,
            )
            for item, mask in zip(found, kinds, strict=True)
        ]

    async def discover(self) -> list[str]:
        """Symbols with a position key or a proposal hash (sorted)."""
        await anyio.lowlevel.checkpoint()
        with_position = {s for s, found in self.inputs.items() if found.position is not None}
        return sorted(with_position | self.proposals.keys())

    async def read_published(self, symbols: Sequence[str] | None) -> dict[str, Hash]:
        self.proposal_reads.append(None if symbols is None else list(symbols))
        await anyio.lowlevel.checkpoint()
        names = list(self.proposals) if symbols is None else symbols
        return {s: dict(self.proposals[s]) for s in names if s in self.proposals}


class MemorySink:
    """Writes outputs into a `MemoryStore`'s proposal hashes and an audit list.

    Implements `core.ports.Sink`. A write applies every output's hash and audit entry or
    none of them, unless a failure is injected. Injected failures, each as Redis shows it:

    * `fail`: the next N writes raise RedisUnavailable, having written nothing;
    * `refuse`: a write with an output for one of these symbols is refused whole
      (WriteRefused with `refusal` as Redis's reply: out of memory, or NOPERM on one
      key); the other outputs are its collateral;
    * `audit_refused`: the audit entries are refused inside the transaction after the
      hashes changed (WriteRefused, every output `touched`: e.g. the stream key holds
      another type), so the hashes no longer say what was confirmed;
    * `uncertain`: the next write's outcome is unknown (WriteUncertain), after applying
      it (True) or not (False);
    * `unanswered`: the next N `landed` checks raise RedisUnavailable.
    """

    def __init__(self, store: MemoryStore | None = None) -> None:
        self.store = store if store is not None else MemoryStore()
        self.batches: list[list[Output]] = []  # every write applied in full, in order
        self.audit: list[Hash] = []  # the audit stream's entries, in order
        self.attempts = 0  # calls of write(), failed ones included
        self.fail = 0
        self.refuse: set[str] = set()
        self.refusal = "OOM command not allowed when used memory > 'maxmemory' (test)"
        self.audit_refused = False
        self.uncertain: bool | None = None
        self.unanswered = 0
        self._applied: set[tuple[str, int]] = set()  # (symbol, seq) of each output written

    @property
    def outputs(self) -> list[Output]:
        """Every output written in full, in order."""
        return [out for batch in self.batches for out in batch]

    def publishes(self, symbol: str, since: int = 0) -> list[PublishOut]:
        """The publishes of `symbol` written in full, from batch `since` on."""
        return [
            out
            for batch in self.batches[since:]
            for out in batch
            if isinstance(out, PublishOut) and out.symbol == symbol
        ]

    def audit_of(self, symbol: str) -> list[Hash]:
        """The audit entries of `symbol`, in order."""
        return [entry for entry in self.audit if entry.get("symbol") == symbol]

    # -- Sink -----------------------------------------------------------------------------
    async def write(self, outputs: Sequence[Output]) -> None:
        self.attempts += 1
        await anyio.lowlevel.checkpoint()
        if self.fail:
            self.fail -= 1
            raise RedisUnavailable("sink down (test)")
        if any(out.symbol in self.refuse for out in outputs):
            collateral = [out for out in outputs if out.symbol not in self.refuse]
            raise WriteRefused(self.refusal, collateral=collateral)
        if self.audit_refused:
            self._apply_hashes(outputs)
            raise WriteRefused("WRONGTYPE audit stream (test)", touched=outputs)
        uncertain, self.uncertain = self.uncertain, None
        if uncertain is False:
            raise WriteUncertain("no reply (test)")
        self._apply_hashes(outputs)
        self.audit.extend(out.audit_fields() for out in outputs)
        self.batches.append(list(outputs))
        self._applied.update((out.symbol, out.seq) for out in outputs)
        if uncertain:
            raise WriteUncertain("no reply (test)")

    async def landed(self, outputs: Sequence[Output]) -> bool:
        await anyio.lowlevel.checkpoint()
        if self.unanswered:
            self.unanswered -= 1
            raise RedisUnavailable("sink down (test)")
        last = outputs[-1]
        return (last.symbol, last.seq) in self._applied

    def _apply_hashes(self, outputs: Sequence[Output]) -> None:
        for out in outputs:
            if isinstance(out, PublishOut):
                self.store.proposals[out.symbol] = dict(out.fields)
            else:
                self.store.proposals.pop(out.symbol, None)


class ManualSource:
    """A change source the test drives: implements `core.ports.ChangeSource`.

    `changed` and `gap` deliver events to the runner it was started by, synchronously
    (as the Redis source does when a notification arrives). `notify(key)` is a keyspace
    notification for a key, delivered only if the Redis source's patterns
    (`Keys.keyspace_patterns`) cover it, as the event its `Keys.classify` makes of it.
    """

    def __init__(self, keys: Keys | None = None) -> None:
        self.keys = keys or Keys()
        self._emit: Callable[[Event], None] | None = None

    @property
    def running(self) -> bool:
        """Whether a runner has started it (events go somewhere)."""
        return self._emit is not None

    async def run(self, emit: Callable[[Event], None], *, task_status: Started) -> None:
        self._emit = emit
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            self._emit = None

    def emit(self, event: Event) -> None:
        if self._emit is None:
            raise RuntimeError("ManualSource: no runner has started it")
        self._emit(event)

    def changed(self, symbol: str, kind: str = "position", times: int = 1) -> None:
        """A notification for one of `symbol`'s input keys (`times` of them)."""
        for _ in range(times):
            self.emit(Changed(symbol, kind))

    def gap(
        self, reason: str = "resubscribed", slots: frozenset[int] | None = None, detail: str = ""
    ) -> None:
        """Notifications may have been lost (a reconnect, a resubscribe); with `slots`,
        only those of the keys in these cluster slots (a topology change)."""
        self.emit(Gap(reason, slots, detail))

    def notify(self, key: str) -> bool:
        """A keyspace notification for `key` (e.g. `keys.risk("BTCUSDT")`); True if it
        reached the runner as a change."""
        channel = self.keys.keyspace_channel_prefix() + key
        if not any(_glob_match(p, channel) for p in self.keys.keyspace_patterns()):
            return False  # not subscribed: Redis would not deliver it
        found = self.keys.classify(key)
        if found is None:
            return False
        kind, symbol = found
        self.emit(Changed(symbol, kind))
        return True


def _glob_match(pattern: str, text: str) -> bool:
    """Redis's glob as `Keys` builds patterns: `*`, `?` and backslash escapes (it escapes
    every other special character of a prefix)."""
    out = []
    chars = iter(pattern)
    for ch in chars:
        if ch == "\\":
            out.append(re.escape(next(chars, "\\")))
        elif ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.fullmatch("".join(out), text, re.DOTALL) is not None
