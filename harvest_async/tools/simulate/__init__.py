"""Synthetic input producer: random-walk prices, regime shifts, positions opening and closing.

`Simulator` is a pure, deterministic generator (one `random.Random(seed)`, no clock, no
I/O): the same symbols, seed and sequence of calls give the same writes, so tests and the
benchmark can reproduce a run exactly. `run_simulator` paces it at a given rate and writes
the three input hashes into Redis the way the real producers do: the whole hash with
`HSET` and a TTL (market state 600 s, positions 3600 s), a closed position as a `FLAT`
hash or a `DEL`.

What a run contains, so that every proposal action and every retraction shows up:

* prices: a geometric random walk per symbol; an open position's hash is rewritten on each
  tick with `unrealized_pnl = (price - entry) * quantity * sign`. Quantities stay near 1
  so that the default `r_basis = "price"` kernel sees R multiples spread over all tranches
  (NONE .. PARTIAL_75) rather than jumping to the top one.
* market state: small drifts of `sigma`, `ts` and the regime probabilities (which sum to
  1); occasional regime shifts (a flip to chop/mean-reversion, a sigma spike, or both)
  that push the kill score over the threshold (FULL_CLOSE_PROPOSED), and back.
* risk proposals: `stop_dist_pct` between 0.3 % and 2 %, sometimes absent (fallback stop).
* positions open (LONG or SHORT, sometimes with a `stop_loss`) and close (a `FLAT` hash or
  the key deleted): retractions for `flat` and `no_position`.
* occasionally a stale input (`ts_timestamp` or `ts_epoch` `stale_age` seconds in the
  past): a `stale_*` retraction until the next fresh write of that hash.

Modules: `model` (the pure generator), `pacing` (into Redis at a rate).
"""

from harvest_async.tools.simulate.model import KINDS, TTL_SEC, InputWrite, Simulator, symbols_for
from harvest_async.tools.simulate.pacing import run_simulator

__all__ = ["KINDS", "TTL_SEC", "InputWrite", "Simulator", "run_simulator", "symbols_for"]
