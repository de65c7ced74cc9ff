"""`harvest-async doctor`: named health checks, each PASS/WARN/FAIL with one line saying what
was found and, when not PASS, one line saying what to do.

Checks, in order (`redis` always runs first; when it fails nothing else can run):

* ``redis``          reachable and authenticated (PING), server flavour and version (WARN
                     when the version is not supported, or not tested);
* ``notifications``  `notify-keyspace-events` covers K, h, g and x;
* ``inputs``         per symbol: market state, risk proposal and position present and fresh
                     (the same validation the service applies, so "fresh" means "the service
                     would advise on it");
* ``publisher``      a publisher is alive (its liveness key exists);
* ``proposals``      every proposal hash carries the contract's fields and is recent;
* ``stream``         the audit stream's length and the age of its last entry.

Exit status (`Report.exit_code`): 0 nothing failed, 1 a check failed, 3 Redis unreachable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Literal

import anyio
import msgspec

from harvest_async.clock import Clock, SystemClock, monotonic
from harvest_async.config import Settings
from harvest_async.core.input_hashes import NoAdvice, SymbolInputs, parse_epoch
from harvest_async.core.inputs import evaluate
from harvest_async.core.models import ACTIONS
from harvest_async.core.proposal import PROPOSAL_FIELDS, SCHEMA_VERSION
from harvest_async.errors import PermissionDenied, RedisUnavailable
from harvest_async.redis_io.client import (
    REDIS_ERRORS,
    Client,
    ResponseError,
    client_for,
    describe_url,
    is_auth_error,
    scan_symbols,
)
from harvest_async.redis_io.inputs_io import InputLimits, read_hashes
from harvest_async.redis_io.notifications import notify_flags_cover, read_notify_flags
from harvest_async.redis_io.server_version import (
    SUPPORTED,
    ServerVersion,
    predates_hello,
    support,
)

__all__ = ["CHECK_NAMES", "Check", "Report", "render_text", "run_doctor"]

Status = Literal["PASS", "WARN", "FAIL"]

CHECK_NAMES: tuple[str, ...] = (
    "redis",
    "notifications",
    "inputs",
    "publisher",
    "proposals",
    "stream",
)

# how many problem symbols/keys a text line names before saying "and N more"
_NAME_LIMIT = 5
_DETAIL_LIMIT = 10
_SCAN_LIMIT = 100_000
_READ_BATCH = 500  # keys per pipelined read
_UNREACHABLE: tuple[type[BaseException], ...] = (*REDIS_ERRORS, RedisUnavailable)
_NO_POSITION = frozenset({"no_position", "flat", "zero_quantity"})
_CONFIG_HINT = (
    "put `notify-keyspace-events KEA` in the server's config file (redis.conf) or on its "
    "command line (--notify-keyspace-events KEA); a CONFIG SET alone is forgotten at the "
    "next restart"
)


class Check(msgspec.Struct, kw_only=True):
    name: str
    status: Status
    message: str
    action: str = ""
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class Report(msgspec.Struct, kw_only=True):
    redis: str
    checks: list[Check]
    unreachable: bool = False

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "FAIL"]

    @property
    def exit_code(self) -> int:
        if self.unreachable:
            return 3
        return 1 if self.failed else 0

    def to_json(self) -> bytes:
        body = {
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "redis": self.redis,
            "checks": self.checks,
        }
        return msgspec.json.encode(body)


def _names(items: Sequence[str], limit: int = _NAME_LIMIT) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _age(seconds: float) -> str:
    if seconds < 600:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class _Context:
    """What later checks learn from earlier ones."""

    def __init__(self) -> None:
        self.open_positions: int | None = None
        self.proposals = 0


async def run_doctor(
    settings: Settings,
    *,
    only: Sequence[str] | None = None,
    instance: str | None = None,
    clock: Clock | None = None,
    socket_timeout: float = 3.0,
) -> Report:
    """Run the checks (all, or `only` these; `redis` always). `instance`: the publisher
    instance that must be alive (None: any instance will do)."""
    clock = clock or SystemClock()
    wanted = set(only) if only else set(CHECK_NAMES)
    report = Report(redis=describe_url(settings.redis_url), checks=[])
    client = client_for(
        settings.redis_url,
        settings.redis_password,
        socket_timeout=socket_timeout,
        name="harvest-async-doctor",
    )
    try:
        redis_check = await _check_redis(client, settings)
        report.checks.append(redis_check)
        if redis_check.status == "FAIL":
            report.unreachable = True
            return report
        ctx = _Context()
        steps = (
            ("notifications", _check_notifications),
            ("inputs", _check_inputs),
            ("publisher", _check_publisher),
            ("proposals", _check_proposals),
            ("stream", _check_stream),
        )
        for name, step in steps:
            if name not in wanted:
                continue
            try:
                check = await step(client, settings, clock.now(), ctx, instance)
            except PermissionDenied as exc:
                check = Check(name=name, status="FAIL", message=str(exc))
            except _UNREACHABLE as exc:
                report.checks.append(
                    Check(
                        name=name,
                        status="FAIL",
                        message=f"Redis error during the check: {type(exc).__name__}: {exc}",
                        action="check the server's log and the network; run doctor again",
                    )
                )
                report.unreachable = True
                return report
            except ResponseError as exc:
                check = Check(
                    name=name,
                    status="FAIL",
                    message=f"the server refused a command: {exc}",
                    action="grant the service's Redis user read access to the keys it uses "
                    "(ACL), or check that the key has the expected type",
                )
            report.checks.append(check)
        return report
    finally:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(*REDIS_ERRORS):
                await client.aclose()


# -- redis ---------------------------------------------------------------------------------
# what servers answer a client without (or with a wrong) password; redis-py raises most of
# them as ConnectionError, so the text is what tells them apart from "not reachable"
_is_auth_error = is_auth_error
_AUTH_ACTION = (
    "check the password: REDIS_URL (redis://:PASSWORD@host or user:password@), "
    "REDIS_PASSWORD_FILE, or the systemd credential redis-password; and the ACL user's rights"
)


async def _check_redis(client: Client, settings: Settings) -> Check:
    where = describe_url(settings.redis_url)
    started = monotonic()
    try:
        await client.ping()
        elapsed = monotonic() - started
        info: dict[str, Any] = await client.info("server")
    except ResponseError as exc:
        text = str(exc)
        if predates_hello(exc):
            return Check(
                name="redis",
                status="FAIL",
                message=f"{where} does not know HELLO, so it predates Redis 6.0: {text}",
                action=f"harvest-async needs {SUPPORTED}: upgrade the server or point "
                "REDIS_URL at another one",
                details={"error": type(exc).__name__},
            )
        if _is_auth_error(text) or "NOPERM" in text:
            return Check(
                name="redis",
                status="FAIL",
                message=f"{where} refused us: {text}",
                action=_AUTH_ACTION,
                details={"error": type(exc).__name__},
            )
        return Check(
            name="redis",
            status="FAIL",
            message=f"{where} answered PING with an error: {text}",
            action="check that REDIS_URL points at a Redis (or Valkey) server that accepts "
            "commands (not loading, not a replica in a bad state)",
            details={"error": type(exc).__name__},
        )
    except REDIS_ERRORS as exc:
        if _is_auth_error(str(exc)):
            return Check(
                name="redis",
                status="FAIL",
                message=f"{where} refused authentication: {exc}",
                action=_AUTH_ACTION,
                details={"error": type(exc).__name__},
            )
        return Check(
            name="redis",
            status="FAIL",
            message=f"cannot reach {where}: {type(exc).__name__}: {exc}",
            action="start Redis or fix REDIS_URL (systemctl status redis-server; "
            "docker compose ps)",
            details={"error": type(exc).__name__},
        )
    server = ServerVersion.from_info(info)
    verdict, why = support(server)
    config_file = str(info.get("config_file") or "")
    message = (
        f"{server.flavour} {server.version} at {where} answered PING in {elapsed * 1000:.1f} ms"
    )
    return Check(
        name="redis",
        status="PASS" if verdict == "supported" else "WARN",
        message=message if verdict == "supported" else f"{message}; {why}",
        action=_VERSION_ACTIONS.get(verdict, ""),
        details={
            "flavour": server.flavour,
            "version": server.version,
            "support": verdict,
            "ping_ms": round(elapsed * 1000, 3),
            "config_file": config_file,
        },
    )


_VERSION_ACTIONS = {
    "unsupported": "`harvest-async run` refuses to start on it (exit 2): upgrade the server, "
    "or point REDIS_URL at a supported one",
    "untested": "expected to work; README.md, 'Supported', lists the servers tested",
}


# -- notifications ---------------------------------------------------------------------------
async def _check_notifications(
    client: Client, settings: Settings, now: float, ctx: _Context, instance: str | None
) -> Check:
    flags = await read_notify_flags(client)
    config_file = ""
    with contextlib.suppress(ResponseError):
        info: dict[str, Any] = await client.info("server")
        config_file = str(info.get("config_file") or "")
    where = f" ({config_file})" if config_file else ""
    hint = _CONFIG_HINT.replace("(redis.conf)", f"({config_file})") if config_file else _CONFIG_HINT
    if flags is None:
        return Check(
            name="notifications",
            status="WARN",
            message="cannot read notify-keyspace-events (CONFIG is disabled or not allowed "
            "for this user); the service relies on its canary to notice missing notifications",
            action=f"make sure the server's config file{where} sets notify-keyspace-events "
            "KEA (at least Khgx)",
            details={"flags": None, "config_file": config_file},
        )
    usable, missing = notify_flags_cover(flags)
    details = {"flags": flags, "missing": missing, "config_file": config_file}
    if not usable:
        return Check(
            name="notifications",
            status="FAIL",
            message=f"notify-keyspace-events={flags!r} lacks {', '.join(missing)}: the service "
            f"cannot see input changes and falls back to polling every "
            f"{settings.poll_interval_sec:g} s",
            action=hint,
            details=details,
        )
    if missing:
        return Check(
            name="notifications",
            status="WARN",
            message=f"notify-keyspace-events={flags!r} lacks {', '.join(missing)}: deleted or "
            "expired inputs are noticed only at the periodic reconcile",
            action=hint,
            details=details,
        )
    return Check(
        name="notifications",
        status="PASS",
        message=f"notify-keyspace-events={flags!r} covers K, h, g and x",
        action=hint,
        details=details,
    )


# -- inputs ------------------------------------------------------------------------------------
async def _scan(client: Client, prefix: str) -> list[str]:
    return await scan_symbols(client, prefix, _SCAN_LIMIT)


async def _hgetall_many(client: Client, keys: Sequence[str]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for start in range(0, len(keys), _READ_BATCH):
        async with client.pipeline(transaction=False) as pipe:
            for key in keys[start : start + _READ_BATCH]:
                pipe.hgetall(key)
            out.extend(await pipe.execute())
    return out


def _epoch_age(fields: dict[str, str] | None, name: str, now: float) -> float | None:
    if not fields or not fields.get(name):
        return None
    try:
        return round(now - parse_epoch(fields[name]), 3)
    except Exception:  # noqa: BLE001 - a bad timestamp is reported by the validation itself
        return None


async def _check_inputs(
    client: Client, settings: Settings, now: float, ctx: _Context, instance: str | None
) -> Check:
    keys = settings.keys
    if settings.symbols is not None:
        symbols = list(settings.symbols)
        origin = "SYMBOLS"
    else:
        symbols = sorted(await _scan(client, keys.position_prefix))
        origin = f"{keys.position_prefix}*"
    if not symbols:
        ctx.open_positions = 0
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
    wanted: list[tuple[str, str]] = []
    for sym in symbols:
        wanted += [
            ("marketstate", keys.marketstate(sym)),
            ("risk", keys.risk(sym)),
            ("position", keys.position(sym)),
        ]
    limits = InputLimits(settings.max_input_fields, settings.max_input_value_bytes)
    raw: list[dict[str, str] | None] = []
    for start in range(0, len(wanted), _READ_BATCH):
        raw += await read_hashes(client, wanted[start : start + _READ_BATCH], limits, "all")
    per_symbol: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    fallback: list[str] = []
    open_positions = 0
    for i, sym in enumerate(symbols):
        ms, risk, pos = (h or None for h in raw[3 * i : 3 * i + 3])
        inputs = SymbolInputs(sym, ms, risk, pos)
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
            "marketstate_age_sec": _epoch_age(ms, "ts_timestamp", now),
            "risk_age_sec": _epoch_age(risk, "ts_epoch", now),
            "position_age_sec": _epoch_age(pos, "ts_epoch", now),
        }
        if isinstance(result, NoAdvice):
            entry["state"] = result.reason
            entry["detail"] = result.detail
            if result.reason not in _NO_POSITION:
                open_positions += 1
                problems.append(sym)
        else:
            open_positions += 1
            entry["state"] = "fresh"
            entry["risk_source"] = result.risk_source
            if result.risk_source == "fallback":
                fallback.append(sym)
        per_symbol[sym] = entry
    ctx.open_positions = open_positions
    details: dict[str, Any] = {
        "symbols": len(symbols),
        "open_positions": open_positions,
        "problems": problems,
        "fallback_stop": fallback,
        "per_symbol": per_symbol,
    }
    summary = (
        f"{len(symbols)} symbols ({origin}), {open_positions} with a position, "
        f"{open_positions - len(problems)} fresh"
    )
    if fallback:
        summary += f", {len(fallback)} on the fallback stop (no risk proposal)"
    if problems:
        shown = [f"{s} {per_symbol[s]['state']}" for s in problems]
        status: Status = "FAIL" if len(problems) == open_positions else "WARN"
        lead = "no position has usable inputs" if status == "FAIL" else "no advice for"
        return Check(
            name="inputs",
            status=status,
            message=f"{summary}; {lead}: {_names(shown)}",
            action=f"the producers of these inputs are late or writing bad values (limit "
            f"MAX_INPUT_AGE_SEC={settings.max_input_age_sec:g} s); check them and their keys "
            "(the details list each symbol's input ages)",
            details=details,
        )
    if open_positions and len(fallback) == open_positions:
        return Check(
            name="inputs",
            status="WARN",
            message=f"{summary}: no symbol has a risk proposal",
            action=f"is the risk proposal producer running (keys {keys.risk_prefix}*)? "
            f"Until then FALLBACK_STOP_PCT={settings.theta.fallback_stop_pct:g} is used",
            details=details,
        )
    return Check(name="inputs", status="PASS", message=summary, details=details)


# -- publisher ---------------------------------------------------------------------------------
async def _check_publisher(
    client: Client, settings: Settings, now: float, ctx: _Context, instance: str | None
) -> Check:
    prefix = settings.keys.liveness_prefix
    names = sorted(await _scan(client, prefix))
    hashes = await _hgetall_many(client, [prefix + n for n in names])
    alive: dict[str, dict[str, Any]] = {}
    for name, fields in zip(names, hashes, strict=True):
        if not fields:
            continue
        beat = _epoch_age(fields, "last_beat_epoch", now)
        alive[name] = {
            "host": fields.get("host", ""),
            "pid": fields.get("pid", ""),
            "version": fields.get("version", ""),
            "symbols": fields.get("symbols", ""),
            "last_beat_age_sec": beat,
        }
    details: dict[str, Any] = {"alive": alive, "required_instance": instance}

    def describe(name: str) -> str:
        a = alive[name]
        age = a["last_beat_age_sec"]
        beat = f", beat {_age(age)} ago" if age is not None else ""
        return f"{name} (pid {a['pid']} on {a['host']}, {a['symbols']} symbols{beat})"

    if instance is not None and instance not in alive:
        others = f"; alive: {_names(list(alive))}" if alive else ""
        return Check(
            name="publisher",
            status="FAIL",
            message=f"publisher instance {instance!r} is not alive (no {prefix}{instance} key)"
            + others,
            action="start it (systemctl start harvest-async) and read its log "
            "(journalctl -u harvest-async -n 50)",
            details=details,
        )
    if not alive:
        return Check(
            name="publisher",
            status="FAIL",
            message=f"no harvest-async publisher is alive (no {prefix}* key)",
            action="start it (systemctl start harvest-async or docker compose up -d) and read "
            "its log (journalctl -u harvest-async -n 50)",
            details=details,
        )
    if len(alive) > 1 and instance is None:
        return Check(
            name="publisher",
            status="WARN",
            message=f"{len(alive)} publishers alive: {_names([describe(n) for n in alive], 3)}",
            action="two publishers fight over the same proposal keys unless their SYMBOLS "
            "(or HARVEST_PREFIX) differ; stop the extra one",
            details=details,
        )
    name = instance if instance is not None else next(iter(alive))
    return Check(name="publisher", status="PASS", message=describe(name), details=details)


# -- proposals ---------------------------------------------------------------------------------
async def _check_proposals(
    client: Client, settings: Settings, now: float, ctx: _Context, instance: str | None
) -> Check:
    keys = settings.keys
    symbols = sorted(await _scan(client, keys.harvest_prefix))
    ctx.proposals = len(symbols)
    if not symbols:
        if ctx.open_positions:
            return Check(
                name="proposals",
                status="WARN",
                message=f"no proposal hashes ({keys.harvest_prefix}*) although "
                f"{ctx.open_positions} symbols have a position",
                action="is the publisher running and using the same Redis database and "
                "HARVEST_PREFIX as the readers?",
                details={"proposals": 0},
            )
        return Check(
            name="proposals",
            status="PASS",
            message=f"no proposal hashes ({keys.harvest_prefix}*): no open positions to advise on",
            details={"proposals": 0},
        )
    hashes = await _hgetall_many(client, [keys.proposal(s) for s in symbols])
    bad: dict[str, list[str]] = {}
    ages: dict[str, float] = {}
    actions: dict[str, int] = {}
    for sym, fields in zip(symbols, hashes, strict=True):
        if not fields:
            continue  # deleted while we looked
        problems = [f for f in PROPOSAL_FIELDS if f not in fields]
        if fields.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            problems.append(f"schema_version={fields['schema_version']}")
        action = fields.get("harvest_action", "")
        if action and action not in ACTIONS:
            problems.append(f"harvest_action={action}")
        if problems:
            bad[sym] = problems
        else:
            actions[action] = actions.get(action, 0) + 1
        age = _epoch_age(fields, "ts_epoch", now) or _epoch_age(fields, "last_update_epoch", now)
        if age is not None:
            ages[sym] = age
    limit = 2 * settings.max_publish_age_sec + settings.publish_interval_sec
    old = sorted((s for s, a in ages.items() if a > limit), key=lambda s: -ages[s])
    details: dict[str, Any] = {
        "proposals": len(symbols),
        "actions": actions,
        "missing_fields": bad,
        "older_than_limit": {s: ages[s] for s in old},
        "age_limit_sec": limit,
        "oldest_age_sec": max(ages.values()) if ages else None,
    }
    counts = ", ".join(f"{n} {a}" for a, n in sorted(actions.items()))
    if bad:
        shown = [f"{s} ({_names(f, 3)})" for s, f in bad.items()]
        return Check(
            name="proposals",
            status="FAIL",
            message=f"{len(bad)} of {len(symbols)} proposal hashes lack contract fields: "
            f"{_names(shown, 3)}",
            action="another writer (the original publisher?) owns these keys: stop it; "
            "harvest-async replaces each hash whole on its next publish",
            details=details,
        )
    if old:
        return Check(
            name="proposals",
            status="WARN",
            message=f"{len(old)} of {len(symbols)} proposals are older than {_age(limit)} "
            f"(2 heartbeats + floor), oldest {old[0]} {_age(ages[old[0]])}",
            action="the publisher is not refreshing them: is it running and connected? "
            "(doctor's publisher check; journalctl -u harvest-async)",
            details=details,
        )
    newest = min(ages.values()) if ages else None
    tail = f", newest {_age(newest)} old" if newest is not None else ""
    return Check(
        name="proposals",
        status="PASS",
        message=f"{len(symbols)} proposals with every contract field ({counts}){tail}",
        details=details,
    )


# -- stream ------------------------------------------------------------------------------------
async def _check_stream(
    client: Client, settings: Settings, now: float, ctx: _Context, instance: str | None
) -> Check:
    name = settings.keys.stream
    if not settings.enable_stream:
        return Check(
            name="stream",
            status="PASS",
            message="audit stream disabled (ENABLE_STREAM=false)",
            details={"enabled": False},
        )
    kind = str(await client.type(name))  # decode_responses=True: already text
    if kind == "none":
        status: Status = "WARN" if ctx.proposals else "PASS"
        return Check(
            name="stream",
            status=status,
            message=f"audit stream {name} does not exist"
            + (" although proposals exist" if ctx.proposals else " yet (nothing published)"),
            action="check STREAM_NAME and ENABLE_STREAM of the publisher" if ctx.proposals else "",
            details={"enabled": True, "length": 0},
        )
    if kind != "stream":
        return Check(
            name="stream",
            status="FAIL",
            message=f"{name} is a {kind}, not a stream: every publish transaction fails on it",
            action=f"rename or delete the key {name} (or set STREAM_NAME to another name)",
            details={"enabled": True, "type": kind},
        )
    length = int(await client.xlen(name))
    last: Any = await client.xrevrange(name, count=1)
    age: float | None = None
    last_event = ""
    if last:
        entry_id, fields = last[0]
        age = round(now - int(str(entry_id).split("-", 1)[0]) / 1000.0, 3)
        last_event = f"{fields.get('event', '?')} {fields.get('symbol', '?')}"
    maxlen = settings.stream_maxlen
    details = {
        "enabled": True,
        "length": length,
        "maxlen": maxlen,
        "last_entry_age_sec": age,
        "last_entry": last_event,
    }
    summary = f"{name}: {length} entries (STREAM_MAXLEN ~{maxlen})"
    if age is not None:
        summary += f", last entry {_age(max(age, 0.0))} ago ({last_event})"
    # MAXLEN ~ trims whole macro nodes (100 entries by default): allow for that
    if length > maxlen + max(1000, maxlen // 10):
        return Check(
            name="stream",
            status="WARN",
            message=summary + ": longer than STREAM_MAXLEN allows",
            action="another writer appends without trimming, or STREAM_MAXLEN differs between "
            "publishers; check who writes to the stream",
            details=details,
        )
    limit = 2 * settings.max_publish_age_sec + settings.publish_interval_sec
    if ctx.proposals and age is not None and age > limit:
        return Check(
            name="stream",
            status="WARN",
            message=summary + f": nothing appended for over {_age(limit)} although "
            f"{ctx.proposals} proposals should be re-published every heartbeat",
            action="is the publisher running? (doctor's publisher check; journalctl -u "
            "harvest-async)",
            details=details,
        )
    return Check(name="stream", status="PASS", message=summary, details=details)


# -- output ------------------------------------------------------------------------------------
def render_text(report: Report) -> str:
    width = max(len(c.name) for c in report.checks) if report.checks else 6
    lines = [f"harvest-async doctor: {report.redis}"]
    for check in report.checks:
        lines.append(f"{check.status:<4}  {check.name:<{width}}  {check.message}")
        pad = " " * (6 + width + 2)
        if check.status != "PASS" and check.action:
            lines.append(f"{pad}-> {check.action}")
        if check.name == "inputs" and check.status != "PASS":
            per = check.details.get("per_symbol", {})
            problems = check.details.get("problems", [])
            for sym in problems[:_DETAIL_LIMIT]:
                entry = per[sym]
                ages = ", ".join(
                    f"{k.removesuffix('_age_sec')} {_age(v)}"
                    for k in ("marketstate_age_sec", "risk_age_sec", "position_age_sec")
                    if (v := entry.get(k)) is not None
                )
                lines.append(
                    f"{pad}   {sym}: {entry['state']}: {entry.get('detail', '')}"
                    + (f" (ages: {ages})" if ages else "")
                )
            if len(problems) > _DETAIL_LIMIT:
                lines.append(f"{pad}   ... and {len(problems) - _DETAIL_LIMIT} more (--json)")
    counts = {s: sum(1 for c in report.checks if c.status == s) for s in ("PASS", "WARN", "FAIL")}
    lines.append(
        f"{counts['PASS']} passed, {counts['WARN']} warnings, {counts['FAIL']} failed"
        + ("; Redis unreachable" if report.unreachable else "")
    )
    return "\n".join(lines)
