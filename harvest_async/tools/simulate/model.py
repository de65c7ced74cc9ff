"""The simulator itself: pure and deterministic (one `random.Random(seed)`, no clock, no
I/O); what a run contains is in the package's docstring."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

__all__ = ["KINDS", "TTL_SEC", "InputWrite", "Simulator", "symbols_for"]

KINDS = ("marketstate", "risk", "position")

# TTLs the real producers set (None: the key does not expire)
TTL_SEC: dict[str, int | None] = {"marketstate": 600, "risk": None, "position": 3600}


class InputWrite(msgspec.Struct, frozen=True):
    """One change of one input hash: the whole hash after the change (empty for delete)."""

    at: float  # epoch seconds
    kind: str  # "marketstate" | "risk" | "position"
    symbol: str
    op: str  # "set" | "delete"
    fields: dict[str, str]


# Well-known bases first (with rough prices), then generated three/four-letter tickers.
_KNOWN: tuple[tuple[str, float], ...] = (
    ("BTC", 65000.0), ("ETH", 3200.0), ("SOL", 150.0), ("BNB", 580.0), ("XRP", 0.55),
    ("ADA", 0.45), ("DOGE", 0.12), ("AVAX", 35.0), ("DOT", 7.0), ("LINK", 15.0),
    ("TRX", 0.12), ("MATIC", 0.7), ("LTC", 80.0), ("BCH", 450.0), ("ATOM", 9.0),
    ("NEAR", 6.0), ("APT", 9.0), ("ARB", 1.1), ("OP", 2.5), ("FIL", 6.0),
    ("INJ", 25.0), ("SUI", 1.2), ("SEI", 0.5), ("TIA", 10.0), ("UNI", 8.0),
    ("AAVE", 95.0), ("ETC", 27.0), ("XLM", 0.11), ("HBAR", 0.09), ("ICP", 12.0),
    ("RUNE", 5.0), ("STX", 2.0), ("IMX", 2.0), ("GRT", 0.25), ("ALGO", 0.18),
    ("FTM", 0.7), ("SAND", 0.45), ("MANA", 0.45), ("AXS", 7.0), ("EGLD", 40.0),
)  # fmt: skip
_KNOWN_PRICE = {f"{base}USDT": price for base, price in _KNOWN}
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def symbols_for(n: int) -> list[str]:
    """`n` plausible, distinct symbols: BTCUSDT, ETHUSDT, ... then generated tickers."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    out = [f"{base}USDT" for base, _ in _KNOWN[:n]]
    seen = set(out)
    i = 0
    while len(out) < n:
        # bijective base-26 over three letters and up (AAA, AAB, ..., ZZZ, AAAA, ...)
        k, letters = i + 26 * 26 + 26, []
        while k >= 0:
            letters.append(_LETTERS[k % 26])
            k = k // 26 - 1
        i += 1
        symbol = "".join(reversed(letters)) + "USDT"
        if symbol not in seen:
            seen.add(symbol)
            out.append(symbol)
    return out


@dataclass(slots=True)
class _Sym:
    symbol: str
    price: float
    vol: float  # per-tick log-price volatility
    sigma: float
    ts: float
    p_trend: float
    p_chop: float
    p_mr: float
    regime: str  # "normal" | "flip" | "spike" | "both"
    stop: float | None  # risk proposal stop_dist_pct (None: absent)
    has_risk: bool
    side: str | None = None  # "LONG" | "SHORT" | None (no position)
    quantity: float = 0.0
    entry: float = 0.0
    created_at: int = 0
    stop_loss: float | None = None
    take_profit: float | None = None
    closed_as_flat: bool = True  # how the last close looked (FLAT hash or no key)
    ever_opened: bool = False


def _r(value: float, digits: int = 6) -> str:
    return repr(round(value, digits))


def _price_text(value: float) -> str:
    # significant digits rather than decimals: 65000.12 and 0.1234567 both read naturally
    return repr(float(f"{value:.8g}"))


class Simulator:
    """Deterministic synthetic inputs for `symbols` (see the module docstring).

    `initial()` is a full snapshot at `start` (it draws no random numbers);
    `advance(now, count)` returns the next `count` changes stamped `now`.
    """

    def __init__(
        self,
        symbols: Sequence[str],
        *,
        seed: int,
        start: float,
        open_fraction: float = 0.7,
        stale_age: float = 900.0,
    ) -> None:
        if not symbols:
            raise ValueError("at least one symbol is needed")
        if len(set(symbols)) != len(symbols):
            raise ValueError("symbols must be distinct")
        self.symbols = tuple(symbols)
        self.start = start
        self.stale_age = stale_age
        self._rng = random.Random(seed)
        self._state: list[_Sym] = []
        rng = self._rng
        for symbol in self.symbols:
            price = _KNOWN_PRICE.get(symbol) or 10 ** rng.uniform(-2.0, 3.0)
            sym = _Sym(
                symbol=symbol,
                price=price,
                vol=rng.uniform(0.002, 0.006),
                sigma=0.0,
                ts=0.0,
                p_trend=0.0,
                p_chop=0.0,
                p_mr=0.0,
                regime="normal",
                stop=None,
                has_risk=rng.random() < 0.9,
            )
            self._set_regime(sym, "normal")
            self._new_stop(sym)
            if rng.random() < open_fraction:
                self._open(sym, int(start) - rng.randrange(0, 3600))
            else:
                sym.closed_as_flat = rng.random() < 0.5
            self._state.append(sym)

    # -- snapshots -----------------------------------------------------------------------
    def initial(self) -> list[InputWrite]:
        """Every symbol's three hashes at `start` (absent keys are not written)."""
        out: list[InputWrite] = []
        for sym in self._state:
            out.append(self._market_write(sym, self.start))
            if sym.has_risk:
                out.append(self._risk_write(sym, self.start))
            if sym.side is not None or sym.closed_as_flat:
                out.append(self._position_write(sym, self.start))
        return out

    def advance(self, now: float, count: int) -> list[InputWrite]:
        """The next `count` changes, each stamped `now`."""
        rng = self._rng
        out: list[InputWrite] = []
        n = len(self._state)
        for _ in range(count):
            sym = self._state[rng.randrange(n)]
            roll = rng.random()
            if roll < 0.55:
                out.append(self._tick(sym, now))
            elif roll < 0.75:
                self._drift(sym)
                out.append(self._market_write(sym, now))
            elif roll < 0.83:
                self._new_stop(sym)
                out.append(self._risk_write(sym, now))
            elif roll < 0.87:
                out.append(self._open_or_close(sym, now))
            elif roll < 0.98:
                self._shift(sym)
                out.append(self._market_write(sym, now))
            else:
                out.append(self._stale(sym, now))
        return out

    # -- state changes -------------------------------------------------------------------
    def _set_regime(self, sym: _Sym, regime: str) -> None:
        rng = self._rng
        sym.regime = regime
        if regime in ("flip", "both"):
            sym.p_trend = rng.uniform(0.05, 0.25)
            sym.p_chop = rng.uniform(0.3, 0.6)
            sym.ts = rng.uniform(0.05, 0.25)
        else:
            sym.p_trend = rng.uniform(0.45, 0.75)
            sym.p_chop = rng.uniform(0.05, 0.2)
            sym.ts = rng.uniform(0.35, 0.7)
        sym.sigma = (
            rng.uniform(0.02, 0.04) if regime in ("spike", "both") else rng.uniform(0.003, 0.009)
        )
        self._normalise(sym)

    def _normalise(self, sym: _Sym) -> None:
        sym.p_trend = round(sym.p_trend, 6)
        sym.p_chop = round(sym.p_chop, 6)
        sym.p_mr = round(1.0 - sym.p_trend - sym.p_chop, 6)

    def _drift(self, sym: _Sym) -> None:
        rng = self._rng
        lo, hi = (0.02, 0.045) if sym.regime in ("spike", "both") else (0.002, 0.0095)
        sym.sigma = min(hi, max(lo, sym.sigma * math.exp(rng.gauss(0.0, 0.05))))
        lo, hi = (0.05, 0.28) if sym.regime in ("flip", "both") else (0.32, 0.75)
        sym.ts = min(hi, max(lo, sym.ts + rng.gauss(0.0, 0.01)))
        lo, hi = (0.03, 0.28) if sym.regime in ("flip", "both") else (0.42, 0.75)
        sym.p_trend = min(hi, max(lo, sym.p_trend + rng.gauss(0.0, 0.01)))
        lo, hi = (0.3, 0.62) if sym.regime in ("flip", "both") else (0.03, 0.22)
        sym.p_chop = min(hi, max(lo, sym.p_chop + rng.gauss(0.0, 0.01)))
        self._normalise(sym)

    def _shift(self, sym: _Sym) -> None:
        # out of a shifted regime at once, into one a quarter of the time: ~1/5 shifted
        rng = self._rng
        if sym.regime == "normal" and rng.random() < 0.25:
            self._set_regime(sym, rng.choice(("flip", "spike", "both")))
        else:
            self._set_regime(sym, "normal")

    def _new_stop(self, sym: _Sym) -> None:
        rng = self._rng
        sym.stop = None if rng.random() < 0.15 else round(rng.uniform(0.003, 0.015), 5)
        sym.has_risk = True

    def _open(self, sym: _Sym, created_at: int) -> None:
        rng = self._rng
        sym.side = "LONG" if rng.random() < 0.6 else "SHORT"
        sym.quantity = round(rng.uniform(0.5, 2.0), 3)
        sym.entry = float(_price_text(sym.price))
        sym.created_at = created_at
        sym.ever_opened = True
        sign = 1.0 if sym.side == "LONG" else -1.0
        if rng.random() < 0.4:
            sym.stop_loss = float(_price_text(sym.entry * (1.0 - sign * rng.uniform(0.01, 0.03))))
        else:
            sym.stop_loss = None
        if rng.random() < 0.3:
            sym.take_profit = float(_price_text(sym.entry * (1.0 + sign * rng.uniform(0.03, 0.1))))
        else:
            sym.take_profit = None

    def _tick(self, sym: _Sym, now: float) -> InputWrite:
        rng = self._rng
        sym.price *= math.exp(rng.gauss(0.0, sym.vol))
        if sym.side is None:
            if rng.random() < 0.05:
                self._open(sym, int(now))
                return self._position_write(sym, now)
            # no position to mark: the producer's market state rewrite is the change
            self._drift(sym)
            return self._market_write(sym, now)
        return self._position_write(sym, now)

    def _open_or_close(self, sym: _Sym, now: float) -> InputWrite:
        if sym.side is None:
            self._open(sym, int(now))
            return self._position_write(sym, now)
        sym.side = None
        sym.closed_as_flat = self._rng.random() < 0.5
        if sym.closed_as_flat:
            return self._position_write(sym, now)
        return InputWrite(now, "position", sym.symbol, "delete", {})

    def _stale(self, sym: _Sym, now: float) -> InputWrite:
        old = now - self.stale_age
        if sym.side is not None and self._rng.random() < 0.3:
            write = self._position_write(sym, now)
            fields = dict(write.fields)
            fields["ts_epoch"] = _r(old, 3)
            return InputWrite(now, "position", sym.symbol, "set", fields)
        write = self._market_write(sym, now)
        fields = dict(write.fields)
        fields["ts_timestamp"] = str(int(old))
        return InputWrite(now, "marketstate", sym.symbol, "set", fields)

    # -- hashes --------------------------------------------------------------------------
    def _market_write(self, sym: _Sym, now: float) -> InputWrite:
        fields = {
            "sigma": _r(sym.sigma),
            "ts": _r(sym.ts),
            "p_trend": _r(sym.p_trend),
            "p_mr": _r(sym.p_mr),
            "p_chop": _r(sym.p_chop),
            "ts_timestamp": str(int(now)),
            # written by the real producer, ignored by the service
            "mu": _r(sym.sigma * (sym.p_trend - sym.p_mr) * 0.1, 8),
            "dp": _r(sym.sigma * 0.5, 8),
            "vr": _r(1.0 + sym.p_trend - sym.p_mr, 6),
            "spike_proxy": _r(sym.sigma / 0.01, 6),
            "buffer_size": "256",
        }
        return InputWrite(now, "marketstate", sym.symbol, "set", fields)

    def _risk_write(self, sym: _Sym, now: float) -> InputWrite:
        fields = {"symbol": sym.symbol, "ts_epoch": _r(now, 3)}
        if sym.stop is not None:
            fields["stop_dist_pct"] = repr(sym.stop)
            fields["proposed_sl"] = _price_text(sym.price * (1.0 - sym.stop))
            fields["proposed_tp"] = _price_text(sym.price * (1.0 + 3.0 * sym.stop))
        return InputWrite(now, "risk", sym.symbol, "set", fields)

    def _position_write(self, sym: _Sym, now: float) -> InputWrite:
        if sym.side is None:
            fields = {
                "symbol": sym.symbol,
                "side": "FLAT",
                "quantity": "0.0",
                "ts_epoch": _r(now, 3),
            }
            return InputWrite(now, "position", sym.symbol, "set", fields)
        sign = 1.0 if sym.side == "LONG" else -1.0
        price = float(_price_text(sym.price))
        fields = {
            "symbol": sym.symbol,
            "side": sym.side,
            "quantity": repr(sym.quantity),
            "entry_price": repr(sym.entry),
            "current_price": repr(price),
            "mark_price": repr(price),
            "unrealized_pnl": _r((price - sym.entry) * sym.quantity * sign, 8),
            "created_at": str(sym.created_at),
            "ts_epoch": _r(now, 3),
        }
        if sym.stop_loss is not None:
            fields["stop_loss"] = repr(sym.stop_loss)
        if sym.take_profit is not None:
            fields["take_profit"] = repr(sym.take_profit)
        return InputWrite(now, "position", sym.symbol, "set", fields)
