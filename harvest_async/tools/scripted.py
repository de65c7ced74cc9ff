"""Scripted demo symbols: a few positions whose story shows what the service is for.

Next to the random symbols of the simulator, the demo runs these five, each cycling
through the same `STEPS` stages, one stage every `step_sec` seconds:

* `DEMO-LADDER`  R climbs 0.5 -> 2.3 -> 4.3 -> 6.5: NONE, PARTIAL_25, PARTIAL_50, PARTIAL_75
* `DEMO-LOCK`    R reaches 1.7 (above lock_R 1.5, below T1_R 2): a stop move to break-even
                (new_sl_proposed) with no partial exit; then the stop is moved and the
                proposal drops the move
* `DEMO-REGIME`  a trend in profit (PARTIAL_25), then the regime collapses (trend to chop,
                volatility spike, trend strength gone): FULL_CLOSE_PROPOSED; then it recovers
* `DEMO-CLOSE`   a position in profit closes (FLAT): the proposal is retracted, and later
                a new position opens
* `DEMO-BADDATA` the market state's sigma becomes text ('n/a'), later the position's entry
                price 0: each time the proposal is retracted with the reason naming the
                field, and published again once the producer writes a good value

All five are LONG 1 @ 100 with a 1 % stop, so R_net = unrealized_pnl - 0.1 (the cost).
Pure and deterministic: `writes(step, now)` is what a producer writes at that stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from harvest_async.clock import Clock
from harvest_async.core.keys import Keys
from harvest_async.redis_io.client import Client
from harvest_async.redis_io.input_writer import InputWriter
from harvest_async.tools.simulate import TTL_SEC, InputWrite

__all__ = ["SCRIPTED", "STEPS", "STORIES", "ScriptedSymbols", "run_script"]

STEPS = 6  # stages per cycle
STORIES = {
    "DEMO-LADDER": "climbs the ladder: PARTIAL_25 -> PARTIAL_50 -> PARTIAL_75",
    "DEMO-LOCK": "profit lock: the stop moves to break-even (new SL), no partial exit",
    "DEMO-REGIME": "regime collapse: PARTIAL_25 -> FULL_CLOSE_PROPOSED -> back",
    "DEMO-CLOSE": "the position closes (FLAT): its proposal is retracted",
    "DEMO-BADDATA": "bad input (sigma 'n/a', then entry_price 0) is named, then recovered",
}
SCRIPTED = tuple(STORIES)

Market = dict[str, object]
_HEALTHY: Market = {"sigma": 0.008, "ts": 0.5, "p_trend": 0.6, "p_mr": 0.2, "p_chop": 0.2}
_COLLAPSED: Market = {"sigma": 0.02, "ts": 0.08, "p_trend": 0.1, "p_mr": 0.35, "p_chop": 0.55}
_ENTRY = 100.0
_STOP = 0.01  # risk unit 1.0 per unit


def _pnl(r_net: float) -> float:
    return round(r_net + _ENTRY * 0.001, 6)  # + the cost (cost_bps 10 of the entry)


# Per symbol and stage: (market state, unrealized PnL or None for FLAT, extra position fields)
Stage = tuple[Market, float | None, dict[str, str]]
_LOCK_SL = {"stop_loss": "98.0"}
_PLAN: dict[str, list[Stage]] = {
    "DEMO-LADDER": [
        (_HEALTHY, _pnl(0.5), {}),
        (_HEALTHY, _pnl(2.3), {}),
        (_HEALTHY, _pnl(4.3), {}),
        (_HEALTHY, _pnl(6.5), {}),
        (_HEALTHY, _pnl(6.5), {}),
        (_HEALTHY, _pnl(6.5), {}),
    ],
    "DEMO-LOCK": [
        (_HEALTHY, _pnl(0.4), _LOCK_SL),
        (_HEALTHY, _pnl(1.2), _LOCK_SL),
        (_HEALTHY, _pnl(1.7), _LOCK_SL),  # R >= lock_R: new SL 100.2
        (_HEALTHY, _pnl(1.7), _LOCK_SL),
        (_HEALTHY, _pnl(1.7), {"stop_loss": "100.2"}),  # the stop was moved: no new SL
        (_HEALTHY, _pnl(1.7), {"stop_loss": "100.2"}),
    ],
    "DEMO-REGIME": [
        (_HEALTHY, _pnl(3.0), {}),
        (_HEALTHY, _pnl(3.0), {}),
        (_COLLAPSED, _pnl(2.4), {}),  # regime flip + sigma spike + ts drop: K ~0.84
        (_COLLAPSED, _pnl(2.4), {}),
        (_COLLAPSED, _pnl(2.4), {}),
        (_HEALTHY, _pnl(3.0), {}),
    ],
    "DEMO-CLOSE": [
        (_HEALTHY, _pnl(1.0), {}),
        (_HEALTHY, _pnl(2.5), {}),
        (_HEALTHY, None, {}),  # closed: FLAT
        (_HEALTHY, None, {}),
        (_HEALTHY, None, {}),
        (_HEALTHY, _pnl(0.5), {}),  # a new position
    ],
    "DEMO-BADDATA": [
        (_HEALTHY, _pnl(2.2), {}),
        ({**_HEALTHY, "sigma": "n/a"}, _pnl(2.2), {}),  # a producer bug
        (_HEALTHY, _pnl(2.2), {}),  # fixed
        (_HEALTHY, _pnl(2.2), {"entry_price": "0"}),
        (_HEALTHY, _pnl(2.2), {}),  # fixed
        (_HEALTHY, _pnl(2.2), {}),
    ],
}


class ScriptedSymbols:
    """The scripted symbols' input hashes at each stage (see the module docstring)."""

    def __init__(self, *, start: float, symbols: Sequence[str] = SCRIPTED) -> None:
        unknown = set(symbols) - set(SCRIPTED)
        if unknown:
            raise ValueError(f"not scripted: {', '.join(sorted(unknown))}")
        self.start = start
        self.symbols = tuple(symbols)
        self.opened = {sym: int(start) - 3600 for sym in self.symbols}  # an hour-old position

    def writes(self, step: int, now: float) -> list[InputWrite]:
        """What the producers write at stage `step` (any int; the script cycles)."""
        out: list[InputWrite] = []
        stage = step % STEPS
        for sym in self.symbols:
            market, pnl, extra = _PLAN[sym][stage]
            if sym == "DEMO-CLOSE" and stage == STEPS - 1:
                self.opened[sym] = int(now)  # the reopened position is new
            out.append(InputWrite(now, "marketstate", sym, "set", self._market(market, now)))
            out.append(InputWrite(now, "risk", sym, "set", {"stop_dist_pct": repr(_STOP)}))
            out.append(
                InputWrite(now, "position", sym, "set", self._position(sym, pnl, extra, now))
            )
        return out

    @staticmethod
    def _market(values: dict[str, object], now: float) -> dict[str, str]:
        fields = {k: v if isinstance(v, str) else repr(v) for k, v in values.items()}
        fields["ts_timestamp"] = str(int(now))
        return fields

    def _position(
        self, symbol: str, pnl: float | None, extra: dict[str, str], now: float
    ) -> dict[str, str]:
        if pnl is None:
            return {"symbol": symbol, "side": "FLAT", "quantity": "0.0", "ts_epoch": repr(now)}
        fields = {
            "symbol": symbol,
            "side": "LONG",
            "quantity": "1.0",
            "entry_price": repr(_ENTRY),
            "current_price": repr(round(_ENTRY + pnl, 6)),
            "unrealized_pnl": repr(pnl),
            "created_at": str(self.opened[symbol]),
            "ts_epoch": repr(round(now, 3)),
        }
        fields.update(extra)
        return fields


async def run_script(
    client: Client,
    keys: Keys,
    script: ScriptedSymbols,
    *,
    clock: Clock,
    step_sec: float,
    on_step: Callable[[int], None] | None = None,
) -> None:
    """Write each stage at its time (stage n at start + n * step_sec), until cancelled."""
    writer = InputWriter(client, keys, ttl=TTL_SEC, label="scripted demo write")
    step = 0
    while True:
        at = script.start + step * step_sec
        await clock.sleep_until(at)
        await writer.write(script.writes(step, clock.now()))
        if on_step is not None:
            on_step(step)
        step += 1
