"""The `publisher`, `proposals` and `stream` checks: is a publisher alive, and do its
outputs look as the contract says (docs/outputs.md)."""

from __future__ import annotations

from typing import Any

from harvest_async.config import Settings
from harvest_async.core.models import ACTIONS
from harvest_async.core.proposal import PROPOSAL_FIELDS, SCHEMA_VERSION
from harvest_async.core.timefmt import age_text
from harvest_async.redis_io.client import Client, hgetall_many, scan_symbols
from harvest_async.tools.doctor.inputs import SCAN_LIMIT, epoch_age
from harvest_async.tools.doctor.report import Check, Context, Status, names

__all__ = ["check_proposals", "check_publisher", "check_stream"]

_LOG_HINT = "(doctor's publisher check; journalctl -u harvest-async)"


def _quiet_limit(settings: Settings) -> float:
    """How long a live publisher can stay silent about a symbol: 2 heartbeats + floor."""
    return 2 * settings.max_publish_age_sec + settings.publish_interval_sec


# -- publisher -------------------------------------------------------------------------------
async def check_publisher(
    client: Client, settings: Settings, now: float, ctx: Context, instance: str | None
) -> Check:
    prefix = settings.keys.liveness_prefix
    found = sorted(await scan_symbols(client, prefix, SCAN_LIMIT))
    hashes = await hgetall_many(client, [prefix + n for n in found])
    alive: dict[str, dict[str, Any]] = {
        name: {
            "host": fields.get("host", ""),
            "pid": fields.get("pid", ""),
            "version": fields.get("version", ""),
            "symbols": fields.get("symbols", ""),
            "group": fields.get("group", ""),
            "last_beat_age_sec": epoch_age(fields, "last_beat_epoch", now),
        }
        for name, fields in zip(found, hashes, strict=True)
        if fields
    }
    details: dict[str, Any] = {"alive": alive, "required_instance": instance}

    def describe(name: str) -> str:
        a = alive[name]
        age = a["last_beat_age_sec"]
        beat = f", beat {age_text(age)} ago" if age is not None else ""
        return f"{name} (pid {a['pid']} on {a['host']}, {a['symbols']} symbols{beat})"

    if instance is not None and instance not in alive:
        others = f"; alive: {names(list(alive))}" if alive else ""
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
    group = settings.group
    if group is not None and all(a["group"] == group for a in alive.values()):
        # a publisher group's members share the symbols (INTERFACE §6): the group check
        names_ = names([describe(n) for n in alive], 3)
        return Check(
            name="publisher",
            status="PASS",
            message=f"{len(alive)} members of group {group} alive: {names_}",
            details=details,
        )
    if len(alive) > 1 and instance is None:
        return Check(
            name="publisher",
            status="WARN",
            message=f"{len(alive)} publishers alive: {names([describe(n) for n in alive], 3)}",
            action="two publishers fight over the same proposal keys unless their SYMBOLS "
            "(or HARVEST_PREFIX) differ; stop the extra one",
            details=details,
        )
    name = instance if instance is not None else next(iter(alive))
    return Check(name="publisher", status="PASS", message=describe(name), details=details)


# -- proposals -------------------------------------------------------------------------------
async def check_proposals(
    client: Client, settings: Settings, now: float, ctx: Context, instance: str | None
) -> Check:
    keys = settings.keys
    symbols = sorted(await scan_symbols(client, keys.harvest_prefix, SCAN_LIMIT))
    ctx.proposals = len(symbols)
    if not symbols:
        return _no_proposals(settings, ctx)
    hashes = await hgetall_many(client, [keys.proposal(s) for s in symbols])
    bad, ages, actions = _survey(dict(zip(symbols, hashes, strict=True)), now)
    limit = _quiet_limit(settings)
    old = sorted((s for s, a in ages.items() if a > limit), key=lambda s: -ages[s])
    details: dict[str, Any] = {
        "proposals": len(symbols),
        "actions": actions,
        "missing_fields": bad,
        "older_than_limit": {s: ages[s] for s in old},
        "age_limit_sec": limit,
        "oldest_age_sec": max(ages.values()) if ages else None,
    }
    if bad:
        shown = [f"{s} ({names(f, 3)})" for s, f in bad.items()]
        return Check(
            name="proposals",
            status="FAIL",
            message=f"{len(bad)} of {len(symbols)} proposal hashes lack contract fields: "
            f"{names(shown, 3)}",
            action="another writer (the original publisher?) owns these keys: stop it; "
            "harvest-async replaces each hash whole on its next publish",
            details=details,
        )
    if old:
        return Check(
            name="proposals",
            status="WARN",
            message=f"{len(old)} of {len(symbols)} proposals are older than {age_text(limit)} "
            f"(2 heartbeats + floor), oldest {old[0]} {age_text(ages[old[0]])}",
            action="the publisher is not refreshing them: is it running and connected? "
            + _LOG_HINT,
            details=details,
        )
    counts = ", ".join(f"{n} {a}" for a, n in sorted(actions.items()))
    newest = min(ages.values()) if ages else None
    tail = f", newest {age_text(newest)} old" if newest is not None else ""
    return Check(
        name="proposals",
        status="PASS",
        message=f"{len(symbols)} proposals with every contract field ({counts}){tail}",
        details=details,
    )


def _survey(
    hashes: dict[str, dict[str, str]], now: float
) -> tuple[dict[str, list[str]], dict[str, float], dict[str, int]]:
    """Per symbol: what its hash gets wrong, its age; and how many hashes per action."""
    bad: dict[str, list[str]] = {}
    ages: dict[str, float] = {}
    actions: dict[str, int] = {}
    for sym, fields in hashes.items():
        if not fields:
            continue  # deleted while we looked
        problems = _contract_problems(fields)
        if problems:
            bad[sym] = problems
        else:
            action = fields["harvest_action"]
            actions[action] = actions.get(action, 0) + 1
        age = epoch_age(fields, "ts_epoch", now) or epoch_age(fields, "last_update_epoch", now)
        if age is not None:
            ages[sym] = age
    return bad, ages, actions


def _contract_problems(fields: dict[str, str]) -> list[str]:
    """What a proposal hash lacks or gets wrong (missing fields, schema, action)."""
    problems = [f for f in PROPOSAL_FIELDS if f not in fields]
    if fields.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        problems.append(f"schema_version={fields['schema_version']}")
    action = fields.get("harvest_action", "")
    if action and action not in ACTIONS:
        problems.append(f"harvest_action={action}")
    return problems


def _no_proposals(settings: Settings, ctx: Context) -> Check:
    """No proposal hash at all: expected unless some position has usable inputs."""
    where = f"{settings.keys.harvest_prefix}*"
    details = {"proposals": 0}
    if ctx.advisable:
        return Check(
            name="proposals",
            status="WARN",
            message=f"no proposal hashes ({where}) although {ctx.advisable} symbols have a "
            "position with usable inputs",
            action="is the publisher running and using the same Redis database and "
            "HARVEST_PREFIX as the readers?",
            details=details,
        )
    if ctx.open_positions:
        return Check(
            name="proposals",
            status="PASS",
            message=f"no proposal hashes ({where}): none of the {ctx.open_positions} symbols "
            "with a position has usable inputs, so there is nothing to advise (see the inputs "
            "check)",
            details=details,
        )
    return Check(
        name="proposals",
        status="PASS",
        message=f"no proposal hashes ({where}): no open positions to advise on",
        details=details,
    )


# -- stream ----------------------------------------------------------------------------------
async def check_stream(
    client: Client, settings: Settings, now: float, ctx: Context, instance: str | None
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
            action="check STREAM_NAME and ENABLE_STREAM of the publisher",
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
    return _stream_state(settings, ctx, await _stream_facts(client, name, now, settings))


async def _stream_facts(
    client: Client, name: str, now: float, settings: Settings
) -> dict[str, Any]:
    length = int(await client.xlen(name))
    last: Any = await client.xrevrange(name, count=1)
    age: float | None = None
    last_event = ""
    if last:
        entry_id, fields = last[0]
        age = round(now - int(str(entry_id).split("-", 1)[0]) / 1000.0, 3)
        last_event = f"{fields.get('event', '?')} {fields.get('symbol', '?')}"
    return {
        "enabled": True,
        "length": length,
        "maxlen": settings.stream_maxlen,
        "last_entry_age_sec": age,
        "last_entry": last_event,
    }


def _stream_state(settings: Settings, ctx: Context, details: dict[str, Any]) -> Check:
    name, length, maxlen = settings.keys.stream, details["length"], details["maxlen"]
    age = details["last_entry_age_sec"]
    summary = f"{name}: {length} entries (STREAM_MAXLEN ~{maxlen})"
    if age is not None:
        summary += f", last entry {age_text(max(age, 0.0))} ago ({details['last_entry']})"
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
    limit = _quiet_limit(settings)
    if ctx.proposals and age is not None and age > limit:
        return Check(
            name="stream",
            status="WARN",
            message=summary + f": nothing appended for over {age_text(limit)} although "
            f"{ctx.proposals} proposals should be re-published every heartbeat",
            action=f"is the publisher running? {_LOG_HINT}",
            details=details,
        )
    return Check(name="stream", status="PASS", message=summary, details=details)
