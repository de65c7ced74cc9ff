"""The `inputs` check: would the service advise on each symbol? The same validation as the
service (`core.inputs.evaluate`), on the hashes read within the service's size limits."""

from __future__ import annotations

from typing import Any

from harvest_async.config import Settings
from harvest_async.core.input_hashes import Hash, NoAdvice, SymbolInputs, parse_epoch
from harvest_async.core.inputs import evaluate
from harvest_async.redis_io.client import Client, scan_symbols
from harvest_async.redis_io.inputs_io import InputLimits, read_input_rows
from harvest_async.tools.doctor.report import Check, Context, Status, names

__all__ = ["SCAN_LIMIT", "check_inputs", "epoch_age"]

SCAN_LIMIT = 100_000  # keys a check looks at under one prefix
_NO_POSITION = frozenset({"no_position", "flat", "zero_quantity"})


def epoch_age(fields: Hash | None, name: str, now: float) -> float | None:
    """Seconds since the epoch time in `fields[name]` (None: absent or unreadable)."""
    if not fields or not fields.get(name):
        return None
    try:
        return round(now - parse_epoch(fields[name]), 3)
    except Exception:  # noqa: BLE001 - a bad timestamp is reported by the validation itself
        return None


async def check_inputs(
    client: Client, settings: Settings, now: float, ctx: Context, instance: str | None
) -> Check:
    keys = settings.keys
    if settings.symbols is not None:
        symbols = list(settings.symbols)
        origin = "SYMBOLS"
    else:
        symbols = sorted(await scan_symbols(client, keys.position_prefix, SCAN_LIMIT))
        origin = f"{keys.position_prefix}*"
    if not symbols:
        ctx.open_positions = ctx.advisable = 0
        return Check(
            name="inputs",
            status="WARN",
            message=f"no position keys under {keys.position_prefix}* (SYMBOLS=*): nothing to "
            "advise on",
            action="check that the position producer runs and that POSITION_PREFIX matches "
            "its keys, or list the symbols in SYMBOLS",
            details={"symbols": 0},
        )
    # whole hashes (the ages shown include the risk proposal's ts_epoch), within the
    # service's size limits: an oversized one shows as the invalid input it is
    limits = InputLimits.of(settings)
    rows = await read_input_rows(client, keys, symbols, limits, "all")
    per_symbol: dict[str, dict[str, Any]] = {}
    opened: list[str] = []  # symbols with a position
    for sym, row in zip(symbols, rows, strict=True):
        entry, has_position = _entry(settings, SymbolInputs(sym, *(h or None for h in row)), now)
        per_symbol[sym] = entry
        if has_position:
            opened.append(sym)
    return _verdict(settings, ctx, origin, per_symbol, opened)


def _entry(settings: Settings, inputs: SymbolInputs, now: float) -> tuple[dict[str, Any], bool]:
    """One symbol as the service sees it (which hashes exist, their ages, its state), and
    whether it has a position."""
    ms, risk, pos = inputs.marketstate, inputs.risk, inputs.position
    result = evaluate(
        inputs,
        now,
        theta=settings.theta,
        max_input_age_sec=settings.max_input_age_sec,
        max_clock_skew_sec=settings.max_clock_skew_sec,
        synthetic_positions=settings.position_source == "synthetic",
    )
    entry: dict[str, Any] = {
        "marketstate": "present" if ms else "absent",
        "risk": "present" if risk else "absent",
        "position": "present" if pos else "absent",
        "marketstate_age_sec": epoch_age(ms, "ts_timestamp", now),
        "risk_age_sec": epoch_age(risk, "ts_epoch", now),
        "position_age_sec": epoch_age(pos, "ts_epoch", now),
    }
    if isinstance(result, NoAdvice):
        entry["state"] = result.reason
        entry["detail"] = result.detail
        return entry, result.reason not in _NO_POSITION
    entry["state"] = "fresh"
    entry["risk_source"] = result.risk_source
    return entry, True


def _verdict(
    settings: Settings,
    ctx: Context,
    origin: str,
    per_symbol: dict[str, dict[str, Any]],
    opened: list[str],
) -> Check:
    problems = [s for s in opened if per_symbol[s]["state"] != "fresh"]
    fallback = [s for s in opened if per_symbol[s].get("risk_source") == "fallback"]
    ctx.open_positions = len(opened)
    ctx.advisable = len(opened) - len(problems)
    details: dict[str, Any] = {
        "symbols": len(per_symbol),
        "open_positions": len(opened),
        "problems": problems,
        "fallback_stop": fallback,
        "per_symbol": per_symbol,
    }
    summary = (
        f"{len(per_symbol)} symbols ({origin}), {len(opened)} with a position, "
        f"{ctx.advisable} fresh"
    )
    if fallback:
        summary += f", {len(fallback)} on the fallback stop (no risk proposal)"
    if problems:
        shown = [f"{s} {per_symbol[s]['state']}" for s in problems]
        status: Status = "FAIL" if not ctx.advisable else "WARN"
        lead = "no position has usable inputs" if status == "FAIL" else "no advice for"
        return Check(
            name="inputs",
            status=status,
            message=f"{summary}; {lead}: {names(shown)}",
            action=f"the producers of these inputs are late or writing bad values (limit "
            f"MAX_INPUT_AGE_SEC={settings.max_input_age_sec:g} s); check them and their keys "
            "(the details list each symbol's input ages)",
            details=details,
        )
    if opened and len(fallback) == len(opened):
        return Check(
            name="inputs",
            status="WARN",
            message=f"{summary}: no symbol has a risk proposal",
            action=f"is the risk proposal producer running (keys {settings.keys.risk_prefix}*)? "
            f"Until then FALLBACK_STOP_PCT={settings.theta.fallback_stop_pct:g} is used",
            details=details,
        )
    return Check(name="inputs", status="PASS", message=summary, details=details)
