"""The `group` check (with GROUP set, INTERFACE §6): the group's live members, who owns
each partition and at which epoch. A partition without an owner is a FAIL: its symbols
get no proposals until a member takes it (within LEASE_TTL_SEC of a member's death)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from harvest_async.config import Settings
from harvest_async.core.group import live_members
from harvest_async.redis_io.client import Client
from harvest_async.redis_io.leases import Leases
from harvest_async.redis_io.liveness import read_publishers
from harvest_async.tools.doctor.report import Check, Context, names

__all__ = ["GROUP_CHECK", "check_group"]

GROUP_CHECK = "group"


async def check_group(
    client: Client, settings: Settings, now: float, ctx: Context, instance: str | None
) -> Check:
    group = settings.group
    assert group is not None
    found = await read_publishers(client, settings.keys)
    beats = {p.instance: (p.group, p.last_beat_epoch) for p in found}
    members = live_members(beats, group, now, settings.lease_ttl_sec)
    leases = Leases(client, settings.keys, group, "doctor", settings.lease_ttl_sec)
    state = await leases.read(settings.partitions)
    owners = {p: s.holder for p, s in state.items()}
    counts = Counter(h for h in owners.values() if h is not None)
    ownerless = sorted(p for p, h in owners.items() if h is None)
    strangers = sorted(set(counts) - set(members))
    details: dict[str, Any] = {
        "group": group,
        "members": members,
        "partitions": settings.partitions,
        "owned": dict(counts),
        "owners": {str(p): {"owner": s.holder, "epoch": s.epoch} for p, s in state.items()},
    }
    spread = ", ".join(f"{m}: {counts.get(m, 0)}" for m in members)
    summary = f"group {group}: {len(members)} members ({spread}) over {settings.partitions}"
    if not members:
        return Check(
            name=GROUP_CHECK,
            status="FAIL",
            message=f"group {group}: no live member (no liveness key with group={group})",
            action="start the group's instances (GROUP=" + group + ") and read their logs",
            details=details,
        )
    if ownerless:
        return Check(
            name=GROUP_CHECK,
            status="FAIL",
            message=f"{summary}; {len(ownerless)} partitions without an owner: "
            + names([str(p) for p in ownerless]),
            action="a member died or is frozen: the others take its partitions within "
            "LEASE_TTL_SEC; if this persists, read the members' logs (partitions gained/lost)",
            details=details,
        )
    if strangers:
        return Check(
            name=GROUP_CHECK,
            status="WARN",
            message=f"{summary}; partitions held by {names(strangers)}, not a live member "
            "(a member frozen or just stopping: its leases expire within LEASE_TTL_SEC)",
            action="run doctor again in a few seconds",
            details=details,
        )
    top = max(s.epoch for s in state.values())
    return Check(
        name=GROUP_CHECK,
        status="PASS",
        message=f"{summary}; every partition owned (epochs up to {top})",
        details=details,
    )
