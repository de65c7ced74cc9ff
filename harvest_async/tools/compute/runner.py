"""Computing cases one at a time into output lines, batched into large writes."""

from __future__ import annotations

from collections.abc import Callable
from math import isfinite
from typing import Any

import msgspec

from harvest_async.core.input_hashes import NoAdvice, trim
from harvest_async.core.inputs import evaluate_parsed, parse_market, parse_position, parse_risk
from harvest_async.core.kernel import KernelInputError, compute
from harvest_async.core.models import Decision, Theta
from harvest_async.tools.compute.cases import (
    Case,
    ServiceCase,
    ServiceChecks,
    ThetaResolver,
    as_hash,
    check_outputs,
    decode_case,
    decode_service_case,
    encode_into,
    encoder,
    error_labels,
)

__all__ = ["CaseRunner"]


class CaseRunner:
    """Computes cases one at a time and batches the output lines into large writes."""

    def __init__(
        self,
        write: Callable[[bytes], object],
        theta_default: Theta,
        checks: ServiceChecks | None = None,
    ) -> None:
        self._write = write
        self.checks = checks  # None: raw kernel
        thetas = ThetaResolver(theta_default)
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
        encoder.encode_into(out, self._buf, -1)
        self._buf.append(10)
        self.rejected += 1

    def _theta(self, raw_theta: msgspec.Raw) -> Theta | str:
        return self._resolve(raw_theta) if raw_theta else self._default

    def run_case(self, index: int, case: Case, line: int | None = None) -> None:
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

    def run_service_case(self, index: int, case: ServiceCase, line: int | None = None) -> None:
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
        risk = None if case.p1_proposal is None else as_hash(case.p1_proposal)
        ready = evaluate_parsed(
            symbol,
            parse_market(trim("marketstate", as_hash(case.market_state))),
            parse_risk(None if risk is None else trim("risk", risk)),
            parse_position(
                trim("position", as_hash(case.position)),
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
            problem = check_outputs(d)
            if problem is not None:
                self.error(index, problem, name, line, symbol)
                return
        buf = self._buf
        buf += b'{"index":%d' % index
        if name is not None:
            buf += b',"name":'
            encode_into(name, buf, -1)
        if symbol:
            buf += b',"symbol":'
            encode_into(symbol, buf, -1)
        # then the decision's object with its "{" turned into ","
        at = len(buf)
        encode_into(d, buf, at)
        buf[at] = 44  # ","
        buf.append(10)

    def run_raw(self, index: int, raw: bytes | msgspec.Raw, line: int | None = None) -> None:
        """Decode one case (array element or line) and compute it in the runner's mode."""
        try:
            if self.checks is not None:
                service_case = decode_service_case(raw)
            else:
                case = decode_case(raw)
        except msgspec.DecodeError as exc:
            name, symbol = error_labels(raw)
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
                case = decode_case(text)
            except msgspec.DecodeError as exc:
                name, symbol = error_labels(text)
                self.error(index, str(exc), name, first_line + offset, symbol)
            else:
                run_case(index, case, first_line + offset)
            index += 1
        self.count = index
        self.flush()
