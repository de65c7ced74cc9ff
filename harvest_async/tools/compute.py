"""The `compute` command: what-if runs over cases read from a stream.

Input: a JSON array, or JSON lines, of objects shaped like the reference vectors (docs/kernel.md)
(`position`, `market_state`, optional `p1_proposal`, optional `theta`, optional `name`;
other keys such as `expected` are ignored). The first non-blank character decides:
`[` means an array, anything else JSON lines (blank lines are skipped).

Two modes:

* the default, *what the service would do*: each object is read as the service reads
  the input hash of that name (its fields as the producer would write them), through the
  same validation (`core.inputs`: parse, then evaluate at `now`), then the kernel. A case the
  service would retract gets an `error` line with the service's reason text
  (`invalid_position: entry_price must be > 0 (0.0)`, `flat: position side is FLAT`).
* `raw`: the locked kernel alone, as the spec defines it (every reference vector,
  including the `edge::` ones the service refuses); only malformed cases and inputs the
  kernel itself refuses get an `error` line.

Output: one JSON line per case, in input order: `index` (0-based), `name` and `symbol`
when the case has them, then the decision; or, for a rejected case, `index` (JSON lines
also `line`, 1-based), `name`, `symbol` and `error`. Empty input gives no output and
status 0.

A case's `theta` sets only the tunables it names; the others come from `theta_default`
(the `--theta` file, else the kernel defaults).

Pure apart from the two streams: standard library, msgspec, the input parsing and the kernel.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from math import isfinite
from typing import IO, Any

import msgspec

from harvest_async.core.input_hashes import NoAdvice, trim
from harvest_async.core.inputs import evaluate_parsed, parse_market, parse_position, parse_risk
from harvest_async.core.kernel import KernelInputError, compute, validate_theta
from harvest_async.core.models import Decision, MarketState, Position, RiskProposal, Theta

__all__ = ["ServiceChecks", "run_compute"]

_DEFAULT_THETA = Theta()

# JSON lines are read in blocks of this size, so memory stays bounded for any input
# (public: tests shrink it to split lines across blocks).
READ_BYTES = 4 << 20


class _Case(msgspec.Struct, gc=False):
    """One what-if case as decoded. `theta` stays raw: it is decoded once per distinct text."""

    position: Position
    market_state: MarketState
    p1_proposal: RiskProposal | None = None
    theta: msgspec.Raw = msgspec.Raw()
    name: str | None = None


class _ServiceCase(msgspec.Struct, gc=False):
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


_case_decoder = msgspec.json.Decoder(_Case)
_cases_decoder = msgspec.json.Decoder(list[_Case])
_service_case_decoder = msgspec.json.Decoder(_ServiceCase)
_service_cases_decoder = msgspec.json.Decoder(list[_ServiceCase])
_raw_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_name_decoder = msgspec.json.Decoder(_NameOnly)
_theta_decoder = msgspec.json.Decoder(Theta)
_dict_decoder = msgspec.json.Decoder(dict[str, Any])
_encoder = msgspec.json.Encoder()
_encode_into = _encoder.encode_into
_decode_case = _case_decoder.decode


def _at_theta(message: str) -> str:
    """Re-root a msgspec error path from the theta object to the case (`$.theta...`)."""
    if "- at `$" in message:
        return message.replace("- at `$", "- at `$.theta", 1)
    return f"{message} - at `$.theta`"


class _ThetaResolver:
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
            if self.default is not _DEFAULT_THETA and self.default != _DEFAULT_THETA:
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


def _check_outputs(d: Decision) -> str | None:
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


def _error_labels(raw: bytes | msgspec.Raw) -> tuple[Any, Any]:
    """(name, symbol) of a case that failed to decode, when they can be read."""
    try:
        labels = _name_decoder.decode(raw)
    except msgspec.DecodeError:
        return None, None
    symbol = labels.position.symbol if labels.position is not None else None
    return labels.name, symbol if isinstance(symbol, str) else None


def _json_text(value: Any) -> str:
    return _encoder.encode(value).decode()


# A JSON value as a producer would write it into a Redis hash field; floats by repr, which
# round-trips exactly, so the service parses the same double.
_HASH_TEXT: dict[type, Callable[[Any], str]] = {
    str: str,
    float: float.__repr__,
    int: int.__repr__,
    bool: lambda value: "true" if value else "false",
}


def _as_hash(obj: dict[str, Any]) -> dict[str, str]:
    """A case's object as the input hash the service would read (null = field absent)."""
    text = _HASH_TEXT.get
    return {k: text(type(v), _json_text)(v) for k, v in obj.items() if v is not None}


class _Runner:
    """Computes cases one at a time and batches the output lines into large writes."""

    def __init__(
        self,
        write: Callable[[bytes], object],
        theta_default: Theta,
        checks: ServiceChecks | None = None,
    ) -> None:
        self._write = write
        self.checks = checks  # None: raw kernel
        thetas = _ThetaResolver(theta_default)
        self._resolve = thetas.resolve
        self._default = theta_default
        self._buf = bytearray()
        self.rejected = 0
        self.count = 0  # cases seen so far (JSON lines)

    def flush(self) -> None:
        if self._buf:
            self._write(bytes(self._buf))
            self._buf.clear()

    def error(
        self,
        index: int | None,
        message: str,
        name: Any = None,
        line: int | None = None,
        symbol: str | None = None,
    ) -> None:
        out: dict[str, Any] = {}
        if index is not None:
            out["index"] = index
        if line is not None:
            out["line"] = line
        if name is not None:
            out["name"] = name
        if symbol:
            out["symbol"] = symbol
        out["error"] = message
        _encoder.encode_into(out, self._buf, -1)
        self._buf.append(10)
        self.rejected += 1

    def _theta(self, raw_theta: msgspec.Raw) -> Theta | str:
        return self._resolve(raw_theta) if raw_theta else self._default

    def run_case(self, index: int, case: _Case, line: int | None = None) -> None:
        """Compute one decoded case with the raw kernel and append its output line."""
        symbol = case.position.symbol
        theta = self._theta(case.theta)
        if isinstance(theta, str):
            self.error(index, theta, case.name, line, symbol)
            return
        try:
            d = compute(case.position, case.market_state, case.p1_proposal, theta)
        except KernelInputError as exc:
            self.error(index, str(exc), case.name, line, symbol)
            return
        self._emit(index, case.name, symbol, d, line)

    def run_service_case(self, index: int, case: _ServiceCase, line: int | None = None) -> None:
        """What the service would do with these three hashes: its validation, then the
        kernel; a reason for no advice becomes the error line, in the service's words."""
        checks = self.checks
        assert checks is not None
        raw_symbol = case.position.get("symbol")
        symbol = raw_symbol if isinstance(raw_symbol, str) else ""
        theta = self._theta(case.theta)
        if isinstance(theta, str):
            self.error(index, theta, case.name, line, symbol)
            return
        risk = None if case.p1_proposal is None else _as_hash(case.p1_proposal)
        ready = evaluate_parsed(
            symbol,
            parse_market(trim("marketstate", _as_hash(case.market_state))),
            parse_risk(None if risk is None else trim("risk", risk)),
            parse_position(
                trim("position", _as_hash(case.position)),
                symbol,
                needs_quantity=theta.r_basis == "position",
            ),
            checks.now,
            max_input_age_sec=checks.max_input_age_sec,
            max_clock_skew_sec=checks.max_clock_skew_sec,
        )
        if isinstance(ready, NoAdvice):
            self.error(index, ready.text(), case.name, line, symbol)
            return
        try:
            d = compute(ready.position, ready.market, ready.risk, theta)
        except KernelInputError as exc:  # the engine's words for it
            self.error(index, NoAdvice("invalid_input", str(exc)).text(), case.name, line, symbol)
            return
        self._emit(index, case.name, symbol, d, line)

    def _emit(
        self, index: int, name: str | None, symbol: str, d: Decision, line: int | None
    ) -> None:
        """Append `{"index":..,"name":..,"symbol":..,<decision>}` (the hot path)."""
        sl = d.new_sl_proposed
        # One sum instead of five isfinite calls; only a failure looks field by field
        # (a sum of finite values can itself overflow, hence the second look).
        if not isfinite(
            d.R_net + d.risk_unit + d.cost_est + d.kill_score + (0.0 if sl is None else sl)
        ):
            problem = _check_outputs(d)
            if problem is not None:
                self.error(index, problem, name, line, symbol)
                return
        buf = self._buf
        buf += b'{"index":%d' % index
        if name is not None:
            buf += b',"name":'
            _encode_into(name, buf, -1)
        if symbol:
            buf += b',"symbol":'
            _encode_into(symbol, buf, -1)
        # then the decision's object with its "{" turned into ","
        at = len(buf)
        _encode_into(d, buf, at)
        buf[at] = 44  # ","
        buf.append(10)

    def run_raw(self, index: int, raw: bytes | msgspec.Raw, line: int | None = None) -> None:
        """Decode one case (array element or line) and compute it in the runner's mode."""
        try:
            if self.checks is not None:
                service_case = _service_case_decoder.decode(raw)
            else:
                case = _decode_case(raw)
        except msgspec.DecodeError as exc:
            name, symbol = _error_labels(raw)
            self.error(index, str(exc), name, line, symbol)
            return
        if self.checks is not None:
            self.run_service_case(index, service_case, line)
        else:
            self.run_case(index, case, line)

    def run_lines(self, lines: list[bytes], first_line: int) -> None:
        """JSON lines: one case per non-blank line; `first_line` numbers `lines[0]`."""
        index = self.count
        if self.checks is not None:
            for offset, text in enumerate(lines):
                if text and not text.isspace():
                    self.run_raw(index, text, first_line + offset)
                    index += 1
            self.count = index
            self.flush()
            return
        run_case = self.run_case
        for offset, text in enumerate(lines):
            if not text or text.isspace():
                continue
            try:
                case = _decode_case(text)
            except msgspec.DecodeError as exc:
                name, symbol = _error_labels(text)
                self.error(index, str(exc), name, first_line + offset, symbol)
            else:
                run_case(index, case, first_line + offset)
            index += 1
        self.count = index
        self.flush()


def _run_array(data: bytes, runner: _Runner) -> None:
    if runner.checks is not None:
        try:
            service_cases: list[_ServiceCase] | None = _service_cases_decoder.decode(data)
        except msgspec.DecodeError:
            service_cases = None
        if service_cases is not None:
            for index, service_case in enumerate(service_cases):
                runner.run_service_case(index, service_case)
                if not index & 0x3FFF:
                    runner.flush()
            return
    else:
        try:
            cases: list[_Case] | None = _cases_decoder.decode(data)
        except msgspec.DecodeError:
            cases = None  # a bad case, or bad JSON: split first to tell which
        if cases is not None:
            run_case = runner.run_case
            for index, case in enumerate(cases):
                run_case(index, case)
                if not index & 0x3FFF:
                    runner.flush()
            return
    try:
        raws = _raw_list_decoder.decode(data)
    except msgspec.DecodeError as exc:
        runner.error(None, f"input is not a valid JSON array: {exc}")
        return
    for index, raw in enumerate(raws):
        runner.run_raw(index, raw)
        if not index & 0x3FFF:
            runner.flush()


def _blocks(first: bytes, stream: IO[bytes]) -> Iterator[bytes]:
    yield first
    while True:
        block = stream.read(READ_BYTES)
        if not block:
            return
        yield block


def _run_lines(blocks: Iterable[bytes], runner: _Runner) -> None:
    first_line = 1
    rest = b""
    for block in blocks:
        lines = (rest + block if rest else block).split(b"\n")
        rest = lines.pop()  # the unfinished last line; b"" after a final newline
        runner.run_lines(lines, first_line)
        first_line += len(lines)
    runner.run_lines([rest], first_line)


def _binary_reader(stream: IO[bytes] | IO[str]) -> IO[bytes]:
    buffer = getattr(stream, "buffer", None)
    if isinstance(stream, io.TextIOBase):
        if buffer is not None:
            return buffer  # type: ignore[no-any-return]
        return io.BytesIO(stream.read().encode())
    return stream  # type: ignore[return-value]


def _binary_writer(stream: IO[bytes] | IO[str]) -> Callable[[bytes], object]:
    if isinstance(stream, io.TextIOBase):
        buffer = getattr(stream, "buffer", None)
        if buffer is not None:
            stream.flush()
            return buffer.write  # type: ignore[no-any-return]
        text_write = stream.write
        return lambda b: text_write(b.decode())
    return stream.write  # type: ignore[return-value]


def run_compute(
    stream_in: IO[bytes] | IO[str],
    stream_out: IO[bytes] | IO[str],
    theta_default: Theta | None = None,
    *,
    checks: ServiceChecks | None = None,
) -> int:
    """Compute every case of `stream_in` into `stream_out`; 0 if all computed, else 1.

    `checks`: the service's validation (what the service would do); None: the raw kernel.
    `theta_default` must already be valid (see `config.load_theta`); it supplies every tunable
    a case's `theta` does not set.
    """
    default = _DEFAULT_THETA if theta_default is None else theta_default
    runner = _Runner(_binary_writer(stream_out), default, checks)
    reader = _binary_reader(stream_in)
    # Find the first non-blank byte to choose array vs JSON lines.
    head = b""
    while True:
        block = reader.read(READ_BYTES)
        if not block:
            break
        head += block
        if head.lstrip():
            break
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    stripped = head.lstrip()
    if stripped.startswith(b"["):
        _run_array(head + reader.read(), runner)
    elif stripped:
        _run_lines(_blocks(head, reader), runner)
    runner.flush()
    flush = getattr(stream_out, "flush", None)
    if flush is not None:
        flush()
    return 1 if runner.rejected else 0
