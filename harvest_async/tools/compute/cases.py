"""A what-if case as decoded (raw kernel, or the service's way), its tunables (resolved
once per distinct text), and the names a case that fails to decode can still be told by."""

from __future__ import annotations

from collections.abc import Callable
from math import isfinite
from typing import Any

import msgspec

from harvest_async.core.kernel import KernelInputError, validate_theta
from harvest_async.core.models import Decision, MarketState, Position, RiskProposal, Theta

__all__ = [
    "DEFAULT_THETA",
    "Case",
    "ServiceCase",
    "ServiceChecks",
    "ThetaResolver",
    "as_hash",
    "check_outputs",
    "decode_case",
    "decode_cases",
    "decode_raw_list",
    "decode_service_case",
    "decode_service_cases",
    "encode_into",
    "encoder",
    "error_labels",
]

DEFAULT_THETA = Theta()


class Case(msgspec.Struct, gc=False):
    """One what-if case as decoded. `theta` stays raw: it is decoded once per distinct text."""

    position: Position
    market_state: MarketState
    p1_proposal: RiskProposal | None = None
    theta: msgspec.Raw = msgspec.Raw()
    name: str | None = None


class ServiceCase(msgspec.Struct, gc=False):
    """A case read the service's way: each object is the input hash of that name."""

    position: dict[str, Any]
    market_state: dict[str, Any]
    p1_proposal: dict[str, Any] | None = None
    theta: msgspec.Raw = msgspec.Raw()
    name: str | None = None


class ServiceChecks(msgspec.Struct, frozen=True, kw_only=True):
    """The service's validation settings (docs/inputs.md): time fields are judged at `now`."""

    now: float
    max_input_age_sec: float = 300.0
    max_clock_skew_sec: float = 5.0


class _Position(msgspec.Struct):
    symbol: Any = None


class _NameOnly(msgspec.Struct):
    """Used on the error path only, to report the name (and symbol) of a case that failed
    to decode."""

    name: Any = None
    position: _Position | None = None


_case_decoder = msgspec.json.Decoder(Case)
_cases_decoder = msgspec.json.Decoder(list[Case])
_service_case_decoder = msgspec.json.Decoder(ServiceCase)
_service_cases_decoder = msgspec.json.Decoder(list[ServiceCase])
_raw_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_name_decoder = msgspec.json.Decoder(_NameOnly)
_theta_decoder = msgspec.json.Decoder(Theta)
_dict_decoder = msgspec.json.Decoder(dict[str, Any])
encoder = msgspec.json.Encoder()
encode_into = encoder.encode_into
decode_case = _case_decoder.decode
decode_cases = _cases_decoder.decode
decode_service_case = _service_case_decoder.decode
decode_service_cases = _service_cases_decoder.decode
decode_raw_list = _raw_list_decoder.decode


def _at_theta(message: str) -> str:
    """Re-root a msgspec error path from the theta object to the case (`$.theta...`)."""
    if "- at `$" in message:
        return message.replace("- at `$", "- at `$.theta", 1)
    return f"{message} - at `$.theta`"


class ThetaResolver:
    """Maps a case's raw theta text to a validated Theta (or the error it causes), cached.

    Keying on the raw bytes makes the common case (`{}` or the same few tunables on every
    line) a dict lookup, and hands the kernel the same Theta object each time so its own
    per-object validation cache hits.
    """

    def __init__(self, default: Theta) -> None:
        self.default = default
        self._cache: dict[bytes, Theta | str] = {}

    def resolve(self, raw: msgspec.Raw) -> Theta | str:
        key = bytes(raw)
        found = self._cache.get(key)
        if found is None:
            found = self._build(key)
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[key] = found
        return found

    def _build(self, key: bytes) -> Theta | str:
        if key == b"null":
            return self.default
        try:
            theta = _theta_decoder.decode(key)
            if self.default is not DEFAULT_THETA and self.default != DEFAULT_THETA:
                given = _dict_decoder.decode(key)
                theta = msgspec.structs.replace(
                    self.default, **{name: getattr(theta, name) for name in given}
                )
        except msgspec.DecodeError as exc:
            return _at_theta(str(exc))
        try:
            validate_theta(theta)
        except KernelInputError as exc:
            return str(exc)
        return theta


def check_outputs(d: Decision) -> str | None:
    """Name the first non-finite number of a decision (finite inputs can still overflow)."""
    sl = d.new_sl_proposed
    values = (
        ("R_net", d.R_net),
        ("risk_unit", d.risk_unit),
        ("cost_est", d.cost_est),
        ("kill_score", d.kill_score),
        ("new_sl_proposed", sl),
    )
    for name, value in values:
        if value is not None and not isfinite(value):
            return f"{name}: result is not finite ({value!r}); the inputs overflow a double"
    return None


def error_labels(raw: bytes | msgspec.Raw) -> tuple[Any, Any]:
    """(name, symbol) of a case that failed to decode, when they can be read."""
    try:
        labels = _name_decoder.decode(raw)
    except msgspec.DecodeError:
        return None, None
    symbol = labels.position.symbol if labels.position is not None else None
    return labels.name, symbol if isinstance(symbol, str) else None


def _json_text(value: Any) -> str:
    return encoder.encode(value).decode()


# A JSON value as a producer would write it into a Redis hash field; floats by repr, which
# round-trips exactly, so the service parses the same double.
_HASH_TEXT: dict[type, Callable[[Any], str]] = {
    str: str,
    float: float.__repr__,
    int: int.__repr__,
    bool: lambda value: "true" if value else "false",
}


def as_hash(obj: dict[str, Any]) -> dict[str, str]:
    """A case's object as the input hash the service would read (null = field absent)."""
    text = _HASH_TEXT.get
    return {k: text(type(v), _json_text)(v) for k, v in obj.items() if v is not None}
