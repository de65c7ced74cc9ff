"""Build the shipped recordings and their expected timelines (reproducibly).

    python examples/recordings/make_scenarios.py            # rewrite everything here
    python examples/recordings/make_scenarios.py --out DIR  # somewhere else
    python examples/recordings/make_scenarios.py --plot docs/simulated_session.png

Eight small recordings replay the scenarios of the original kernel's replay script (the
`upstream_replay::*` kernel vectors): increasing PnL, regime flip, volatility spike,
trend-strength collapse, aging, perfect storm, profit lock long and short, no risk
proposal. Each is a few input changes spaced around the default floor (10 s) and
heartbeat (60 s), so their timelines also show a floor trailing edge and heartbeats in
virtual time. Positions carry the legacy `age_sec` field, so every kill score equals the
vector's exactly.

`simulated_session.jsonl.gz` is an hour of 12 symbols from `simulate.Simulator` with a
fixed seed (one change every 1/3 s).

Every `X.jsonl[.gz]` gets `X.expected.jsonl[.gz]`: its replay with the default settings.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from harvest_async.config import engine_config, settings_from_env
from harvest_async.replay.plot import load_timeline, plot_timeline
from harvest_async.replay.recording_writer import write_recording
from harvest_async.replay.timeline import replay_to_file
from harvest_async.tools.simulate import InputWrite, Simulator, symbols_for

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
HERE = Path(__file__).resolve().parent

SESSION_SYMBOLS = 12
SESSION_SEED = 20260101
SESSION_SECONDS = 3600
SESSION_RATE = 3  # changes per second


def market(
    at: float,
    *,
    sigma: float = 0.01,
    ts: float = 0.4,
    p_trend: float = 0.6,
    p_mr: float = 0.2,
    p_chop: float = 0.2,
    sym: str = "BTCUSDT",
) -> InputWrite:
    fields = {
        "sigma": repr(sigma),
        "ts": repr(ts),
        "p_trend": repr(p_trend),
        "p_mr": repr(p_mr),
        "p_chop": repr(p_chop),
        "ts_timestamp": str(int(at)),
    }
    return InputWrite(at, "marketstate", sym, "set", fields)


def risk(at: float, stop: float = 0.02, sym: str = "BTCUSDT") -> InputWrite:
    fields = {"symbol": sym, "stop_dist_pct": repr(stop), "ts_epoch": repr(at)}
    return InputWrite(at, "risk", sym, "set", fields)


def position(
    at: float,
    pnl: float,
    *,
    side: str = "LONG",
    entry: float = 100.0,
    stop_loss: float = 99.0,
    age: float = 3600.0,
    sym: str = "BTCUSDT",
) -> InputWrite:
    sign = 1.0 if side == "LONG" else -1.0
    price = entry + sign * pnl
    fields = {
        "symbol": sym,
        "side": side,
        "quantity": "1.0",
        "entry_price": repr(entry),
        "current_price": repr(price),
        "unrealized_pnl": repr(pnl),
        "stop_loss": repr(stop_loss),
        "age_sec": repr(age),
        "ts_epoch": repr(at),
    }
    return InputWrite(at, "position", sym, "set", fields)


def at(seconds: float) -> float:
    return T0 + seconds


# name -> (description, initial writes, changes, end offset)
Scenario = tuple[str, list[InputWrite], list[InputWrite], float]


def scenarios() -> dict[str, Scenario]:
    s: dict[str, Scenario] = {}
    s["s1_increasing_pnl"] = (
        "PnL 1 -> 5 -> 9 -> 14 (entry 100, stop 2 %): NONE, PARTIAL_25 + profit lock, "
        "PARTIAL_50, PARTIAL_75. The tick at +63 s lands inside the floor and is published "
        "by the trailing edge at +70 s; heartbeats follow the last change.",
        [market(T0), risk(T0), position(T0, 1.0)],
        [
            position(at(30), 5.0),
            position(at(60), 9.0),
            position(at(63), 9.2),
            position(at(100), 14.0),
        ],
        220.0,
    )
    s["s2_regime_flip"] = (
        "Trend regime (p_trend 0.6) flips to chop/mean reversion (0.1/0.3/0.6) at +30 s: "
        "FULL_CLOSE_PROPOSED with kill_score_triggered, regime_flip.",
        [market(T0), risk(T0), position(T0, 3.0)],
        [market(at(30), p_trend=0.1, p_mr=0.3, p_chop=0.6)],
        120.0,
    )
    s["s3_volatility_spike"] = (
        "sigma 0.01 -> 0.03 at +30 s: FULL_CLOSE_PROPOSED with sigma_spike.",
        [market(T0, p_trend=0.5, p_chop=0.3), risk(T0), position(T0, 3.0)],
        [market(at(30), sigma=0.03, p_trend=0.5, p_chop=0.3)],
        120.0,
    )
    s["s4_trend_collapse"] = (
        "Trend strength ts 0.5 -> 0.1 at +30 s: the kill score rises (0.503 -> 0.528), "
        "a material change with the action still NONE.",
        [market(T0, ts=0.5), risk(T0), position(T0, 3.0)],
        [market(at(30), ts=0.1)],
        120.0,
    )
    s["s5_aging"] = (
        "Position age 1 h -> 100,000 s at +30 s: the age penalty lifts the kill score to "
        "0.574, below the threshold (age alone never kills).",
        [market(T0, p_trend=0.5, p_chop=0.3), risk(T0), position(T0, 3.0)],
        [position(at(30), 3.0, age=100_000.0)],
        120.0,
    )
    s["s6_perfect_storm"] = (
        "At +30 s everything at once: regime flip, sigma 0.03, ts 0.1, age 100,000 s, PnL 2: "
        "kill score 0.917, FULL_CLOSE_PROPOSED with kill_score_triggered, regime_flip, "
        "sigma_spike, age_penalty (the original script used kill_threshold 0.5; the default "
        "0.6 gives the same decision).",
        [market(T0), risk(T0), position(T0, 3.0)],
        [
            market(at(30), sigma=0.03, ts=0.1, p_trend=0.1, p_mr=0.3, p_chop=0.6),
            position(at(30), 2.0, age=100_000.0),
        ],
        120.0,
    )
    s["s7_profit_lock"] = (
        "A LONG (stop 99) and a SHORT (stop 101), both entry 100, PnL 1 -> 4 at +30 s: R 1.95 "
        "passes lock_R 1.5, so the stops move to break-even plus 0.2 %: 100.2 and 99.8, "
        "action NONE.",
        [
            market(T0),
            risk(T0),
            position(T0, 1.0),
            market(T0, sym="ETHUSDT"),
            risk(T0, sym="ETHUSDT"),
            position(T0, 1.0, side="SHORT", stop_loss=101.0, sym="ETHUSDT"),
        ],
        [
            position(at(30), 4.0),
            position(at(30), 4.0, side="SHORT", stop_loss=101.0, sym="ETHUSDT"),
        ],
        120.0,
    )
    s["s8_no_risk_proposal"] = (
        "No risk proposal: the fallback stop (2 %) gives R 2.45, PARTIAL_25 + lock "
        "(risk_source=fallback). At +30 s a proposal with a 1 % stop arrives: R 4.9, "
        "PARTIAL_50 (risk_source=p1). At +60 s its key is deleted: back to the fallback.",
        [market(T0, p_trend=0.5, p_chop=0.3), position(T0, 5.0)],
        [
            risk(at(30), stop=0.01),
            InputWrite(at(60), "risk", "BTCUSDT", "delete", {}),
        ],
        150.0,
    )
    return s


def session_changes(sim: Simulator) -> Iterator[InputWrite]:
    step = 1.0 / SESSION_RATE
    for k in range(1, SESSION_SECONDS * SESSION_RATE + 1):
        yield from sim.advance(round(T0 + k * step, 3), 1)


def build(out: Path) -> list[Path]:
    """Write every recording and expected timeline into `out`; returns the recordings."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, (description, initial, changes, end) in scenarios().items():
        path = out / f"{name}.jsonl"
        write_recording(
            path,
            start=T0,
            initial=initial,
            changes=changes,
            end_at=T0 + end,
            source="examples/recordings/make_scenarios.py",
            meta={"scenario": name, "description": description},
        )
        written.append(path)
    sim = Simulator(symbols_for(SESSION_SYMBOLS), seed=SESSION_SEED, start=T0)
    path = out / "simulated_session.jsonl.gz"
    write_recording(
        path,
        start=T0,
        initial=sim.initial(),
        changes=session_changes(sim),
        end_at=T0 + SESSION_SECONDS,
        source="harvest_async.tools.simulate.Simulator",
        meta={
            "scenario": "simulated_session",
            "description": (
                f"{SESSION_SYMBOLS} symbols, seed {SESSION_SEED}, one change every "
                f"1/{SESSION_RATE} s for {SESSION_SECONDS} s"
            ),
        },
    )
    written.append(path)
    config = engine_config(settings_from_env({}))  # the defaults, not this shell's env
    for recording in written:
        replay_to_file(recording, config, str(expected_path(recording)), show_progress=False)
    return written


def expected_path(recording: Path) -> Path:
    name = recording.name
    if name.endswith(".jsonl.gz"):
        return recording.with_name(name.removesuffix(".jsonl.gz") + ".expected.jsonl.gz")
    return recording.with_name(name.removesuffix(".jsonl") + ".expected.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="directory (default: here)")
    parser.add_argument("--plot", type=Path, help="also draw the simulated session here")
    args = parser.parse_args()
    written = build(args.out)
    for path in written:
        print(f"{path}  ->  {expected_path(path).name}")  # noqa: T201
    if args.plot is not None:
        series = load_timeline(str(expected_path(args.out / "simulated_session.jsonl.gz")))
        chosen = sorted(series)[:6]
        plot_timeline(
            series,
            str(args.plot),
            symbols=chosen,
            title="Simulated session (examples/recordings/simulated_session.jsonl.gz), "
            "6 of 12 symbols",
        )
        print(f"plot: {args.plot}")  # noqa: T201


if __name__ == "__main__":
    main()
