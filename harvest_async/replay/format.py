"""Recordings of input changes: a versioned JSON-lines format (docs/recording.md).

A recording is a header line followed by one line per event:

* ``set``     one input hash after a change (the whole hash);
* ``delete``  one input key removed (DEL or expiry);
* ``snapshot`` the complete input state at that moment (after a gap: a reconnect);
* ``end``     the recorder stopped cleanly (its absence means the file may be cut short).

Lines are encoded and decoded with msgspec; a file whose name ends in ``.gz`` is written
gzip-compressed, and a gzip file is recognised by its magic bytes when read. Pure: no
Redis, no clock. Decoding errors name the file and the line.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from harvest_async.errors import RecordingError

__all__ = [
    "FORMAT",
    "KINDS",
    "VERSION",
    "Delete",
    "End",
    "Header",
    "Line",
    "Prefixes",
    "RecordingError",
    "Set",
    "Snapshot",
    "SymbolState",
]

FORMAT = "harvest-async-recording"
VERSION = 1

Kind = Literal["marketstate", "risk", "position"]
KINDS: tuple[Kind, ...] = ("marketstate", "risk", "position")
Fields = dict[str, str]
Symbol = Annotated[str, msgspec.Meta(min_length=1)]
# JSON has no NaN/inf, so a decoded time is always finite
Time = Annotated[float, msgspec.Meta(ge=0.0)]


class Prefixes(msgspec.Struct, frozen=True, kw_only=True):
    """The key prefixes the inputs were read under (informational; symbols are explicit)."""

    marketstate: str = "quantum:marketstate:"
    risk: str = "quantum:risk:proposal:"
    position: str = "quantum:state:positions:"


class SymbolState(msgspec.Struct, omit_defaults=True):
    """One symbol's three input hashes; None (omitted) = the key is absent."""

    marketstate: Fields | None = None
    risk: Fields | None = None
    position: Fields | None = None

    def get(self, kind: str) -> Fields | None:
        value: Fields | None = getattr(self, kind)
        return value


class Header(msgspec.Struct, kw_only=True, omit_defaults=True):
    format: str
    version: int
    start: Time  # epoch seconds of the initial state (replay starts its clock here)
    created_by: str = ""
    source: str = ""  # where it was recorded (a Redis URL without credentials, a generator)
    prefixes: Prefixes = Prefixes()
    symbols: list[Symbol] | None = None  # None: every symbol seen
    snapshot: dict[Symbol, SymbolState] = {}
    meta: dict[str, str] = {}


class Set(msgspec.Struct, tag="set", tag_field="op"):
    at: Time
    kind: Kind
    symbol: Symbol
    fields: Annotated[Fields, msgspec.Meta(min_length=1)]


class Delete(msgspec.Struct, tag="delete", tag_field="op"):
    at: Time
    kind: Kind
    symbol: Symbol


class Snapshot(msgspec.Struct, tag="snapshot", tag_field="op"):
    """The complete input state at `at`: keys not listed are absent."""

    at: Time
    reason: str
    state: dict[Symbol, SymbolState]


class End(msgspec.Struct, tag="end", tag_field="op"):
    at: Time
    reason: str = "stopped"
    changes: int | None = None  # the number of set/delete lines, checked when reading


Line = Set | Delete | Snapshot | End
