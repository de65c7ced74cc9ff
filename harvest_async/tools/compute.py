"""The `compute` command: what-if runs of the kernel over cases read from a stream.

Input: a JSON array, or JSON lines, of objects shaped like the reference vectors (docs/kernel.md)
(`position`, `market_state`, optional `p1_proposal`, optional `theta`, optional `name`;
other keys such as `expected` are ignored). The first non-blank character decides:
`[` means an array, anything else JSON lines (blank lines are skipped).

Output: one JSON line per case, in input order. A computed case gives the decision
(`name` first when the case has one); a rejected case gives
`{"index": i, "name": ..., "error": "..."}` where `index` is the 0-based case number
(JSON lines also get `line`, 1-based) and the error names the field. Empty input gives
no output and status 0.

A case's `theta` sets only the tunables it names; the others come from `theta_default`
(the `--theta` file, else the kernel defaults).

Pure apart from the two streams: standard library, msgspec and the kernel only.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from math import isfinite
from typing import IO, Any

import msgspec

from harvest_async.core.kernel import KernelInputError, compute, validate_theta
from harvest_async.core.models import Decision, MarketState, Position, RiskProposal, Theta

__all__ = ["run_compute"]

_DEFAULT_THETA = Theta()

# JSON lines are read in blocks of this size, so memory stays bounded for any input.
_READ_BYTES = 4 << 20


class _Case(msgspec.Struct, gc=False):
    """One what-if case as decoded. `theta` stays raw: it is decoded once per distinct text."""

    position: Position
    market_state: MarketState
    p1_proposal: RiskProposal | None = None
    theta: msgspec.Raw = msgspec.Raw()
    name: str | None = None


class _NameOnly(msgspec.Struct):
    """Used on the error path only, to report the name of a case that failed to decode."""

    name: Any = None


_case_decoder = msgspec.json.Decoder(_Case)
_cases_decoder = msgspec.json.Decoder(list[_Case])
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


def _error_name(raw: bytes | msgspec.Raw) -> Any:
    try:
        return _name_decoder.decode(raw).name
    except msgspec.DecodeError:
        return None


class _Runner:
    """Computes cases one at a time and batches the output lines into large writes."""

    def __init__(self, write: Callable[[bytes], object], theta_default: Theta) -> None:
        self._write = write
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
        self, index: int | None, message: str, name: Any = None, line: int | None = None
    ) -> None:
        out: dict[str, Any] = {}
        if index is not None:
            out["index"] = index
        if line is not None:
            out["line"] = line
        if name is not None:
            out["name"] = name
        out["error"] = message
        _encoder.encode_into(out, self._buf, -1)
        self._buf.append(10)
        self.rejected += 1

    def run_case(self, index: int, case: _Case, line: int | None = None) -> None:
        """Compute one decoded case and append its output line (the hot path)."""
        raw_theta = case.theta
        if raw_theta:
            theta = self._resolve(raw_theta)
            if isinstance(theta, str):
                self.error(index, theta, case.name, line)
                return
        else:
            theta = self._default
        try:
            d = compute(case.position, case.market_state, case.p1_proposal, theta)
        except KernelInputError as exc:
            self.error(index, str(exc), case.name, line)
            return
        sl = d.new_sl_proposed
        # One sum instead of five isfinite calls; only a failure looks field by field
        # (a sum of finite values can itself overflow, hence the second look).
        if not isfinite(
            d.R_net + d.risk_unit + d.cost_est + d.kill_score + (0.0 if sl is None else sl)
        ):
            problem = _check_outputs(d)
            if problem is not None:
                self.error(index, problem, case.name, line)
                return
        buf = self._buf
        name = case.name
        if name is None:
            _encode_into(d, buf, -1)
        else:
            # {"name":<name>} then the decision's object with its "{" turned into ",".
            buf += b'{"name":'
            _encode_into(name, buf, -1)
            at = len(buf)
            _encode_into(d, buf, at)
            buf[at] = 44  # ","
        buf.append(10)

    def run_raw(self, index: int, raw: bytes | msgspec.Raw, line: int | None = None) -> None:
        try:
            case = _decode_case(raw)
        except msgspec.DecodeError as exc:
            self.error(index, str(exc), _error_name(raw), line)
            return
        self.run_case(index, case, line)

    def run_lines(self, lines: list[bytes], first_line: int) -> None:
        """JSON lines: one case per non-blank line; `first_line` numbers `lines[0]`."""
        run_case = self.run_case
        index = self.count
        for offset, text in enumerate(lines):
            if not text or text.isspace():
                continue
            try:
                case = _decode_case(text)
            except msgspec.DecodeError as exc:
                self.error(index, str(exc), _error_name(text), first_line + offset)
            else:
                run_case(index, case, first_line + offset)
            index += 1
        self.count = index
        self.flush()


def _run_array(data: bytes, runner: _Runner) -> None:
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
        block = stream.read(_READ_BYTES)
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
) -> int:
    """Compute every case of `stream_in` into `stream_out`; 0 if all computed, else 1.

    `theta_default` must already be valid (see `config.load_theta`); it supplies every tunable
    a case's `theta` does not set.
    """
    default = _DEFAULT_THETA if theta_default is None else theta_default
    runner = _Runner(_binary_writer(stream_out), default)
    reader = _binary_reader(stream_in)
    # Find the first non-blank byte to choose array vs JSON lines.
    head = b""
    while True:
        block = reader.read(_READ_BYTES)
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
