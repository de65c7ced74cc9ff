"""The service under a least-privilege ACL user, on real servers.

* the ACL documented in docs/operations.md, exactly as written there, is enough: the
  service publishes, retracts and survives a reconnect under it;
* the sweep: a user lacking one permission of it (a command, a key pattern, write access,
  a channel pattern) cannot start: one line naming what is missing, exit 2 (as a
  subprocess for a few, through `serve` for the rest), and nothing is written;
* a permission taken away while the service runs is logged once, the service keeps
  running, and it converges once the permission is back.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import sys
from itertools import count
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis

from harvest_async.config import Settings, settings_from_env
from harvest_async.errors import PermissionDenied
from harvest_async.service.app import serve
from tests.support.live import (
    KEYS,
    SYM,
    absent,
    audit,
    connected,
    logged,
    passes_above,
    position,
    put_inputs,
    running,
    service_env,
    shows_pnl,
    wait_for,
)

INSTANCE = "vps-1"  # the instance the documented ACL names
PASSWORD = "acl-test-password"
OPERATIONS = Path(__file__).parents[2] / "docs" / "operations.md"
_users = count()


def documented_acl() -> list[str]:
    """The rules of the `ACL SETUSER harvest ...` command in docs/operations.md."""
    text = OPERATIONS.read_text()
    found = re.search(r"```sh\n(redis-cli ACL SETUSER harvest .*?)```", text, re.S)
    assert found, "docs/operations.md lost its ACL SETUSER command"
    words = shlex.split(found.group(1).replace("\\\n", " "))
    assert words[:4] == ["redis-cli", "ACL", "SETUSER", "harvest"]
    return [w.replace("$HARVEST_PASSWORD", PASSWORD) for w in words[4:]]


def user_url(redis_url: str, user: str) -> str:
    scheme, rest = redis_url.split("://", 1)
    return f"{scheme}://{user}:{PASSWORD}@{rest}"


async def create_user(admin: aioredis.Redis, rules: list[str]) -> str:
    name = f"harvest{next(_users)}"
    if await is_redis_6(admin):
        rules = [for_redis_6(rule) for rule in rules]
    await admin.execute_command("ACL", "SETUSER", name, "reset", *rules)
    return name


async def is_redis_6(admin: aioredis.Redis) -> bool:
    """Redis 6.2: no read-only key permissions (`%R~`) and no EVALSHA_RO (the variant
    docs/operations.md gives for it)."""
    info = await admin.info("server")
    return "valkey_version" not in info and int(str(info["redis_version"]).split(".")[0]) < 7


def for_redis_6(text: str) -> str:
    return text.replace("%R~", "~").replace("evalsha_ro", "evalsha")


async def nothing_written(client: aioredis.Redis) -> bool:
    written = await client.exists(KEYS.proposal(SYM), KEYS.stream, KEYS.liveness(INSTANCE))
    return written == 0


def env_for(url: str) -> dict[str, str]:
    """Every symbol, and the instance the documented ACL names."""
    return service_env(url, SYMBOLS="*", INSTANCE=INSTANCE)


def make_settings(url: str) -> Settings:
    return settings_from_env(env_for(url))


# -- the documented ACL ------------------------------------------------------------------


async def test_the_documented_acl_is_enough(redis_url: str) -> None:
    async with connected(redis_url) as admin:
        user = await create_user(admin, documented_acl())
        await put_inputs(admin)
        async with running(make_settings(user_url(redis_url, user))) as runner:
            await wait_for(lambda: shows_pnl(admin, 0.0), "the first publish")
            await wait_for(lambda: admin.exists(KEYS.liveness(INSTANCE)), "the liveness key")
            # a closed position is retracted
            await admin.delete(KEYS.position(SYM))
            await wait_for(lambda: absent(admin), "the retraction")
            await admin.hset(KEYS.position(SYM), mapping=position(5.0))  # type: ignore[arg-type]
            await wait_for(lambda: shows_pnl(admin, 5.0), "the publish after reopening")
            # every connection dropped: it reconnects, resyncs and follows changes again
            passes = runner.passes
            for kind in ("normal", "pubsub"):
                await admin.execute_command("CLIENT", "KILL", "USER", user, "TYPE", kind)
            await wait_for(passes_above(runner, passes), "the resync after the reconnect")
            await admin.hset(KEYS.position(SYM), mapping=position(9.0))  # type: ignore[arg-type]
            await wait_for(lambda: shows_pnl(admin, 9.0), "a publish after the reconnect")
            events = [e["event"] for e in await audit(admin)]
            assert events == ["publish", "retract", "publish", "publish"]
            assert runner.engine.status(SYM) == "ok"


async def test_config_get_is_optional(redis_url: str) -> None:
    """Without CONFIG GET the service cannot read the notification flags; it starts and
    trusts its canary instead."""
    async with connected(redis_url) as admin:
        user = await create_user(admin, without("+config|get", None))
        await put_inputs(admin)
        async with running(make_settings(user_url(redis_url, user))):
            await wait_for(lambda: shows_pnl(admin, 0.0), "the first publish")
            await admin.hset(KEYS.position(SYM), mapping=position(5.0))  # type: ignore[arg-type]
            await wait_for(lambda: shows_pnl(admin, 5.0), "a publish on a change")


# -- one permission missing: the start stops, naming it ----------------------------------

_PROPOSALS = "~quantum:harvest:proposal:*"
_STREAM = "~quantum:stream:harvest.proposal"
_LIVENESS = f"~quantum:harvest:publisher:{INSTANCE}"

# (the documented rule to drop, its replacement or None, what the error names)
SWEEP: list[tuple[str, str | None, str]] = [
    ("+client|setname", None, "command client|setname"),
    ("+ping", None, "command ping"),
    ("+script|load", None, "command script|load"),
    ("+evalsha_ro", None, "command evalsha_ro"),
    ("+hlen", None, "command hlen"),
    ("+memory|usage", None, "command memory|usage"),
    ("+hstrlen", None, "command hstrlen"),
    ("+hmget", None, "command hmget"),
    ("+scan", None, "command scan"),
    ("+hgetall", None, "command hgetall"),
    ("+evalsha", None, "command evalsha"),
    ("+multi", None, "command multi"),
    ("+exec", None, "command exec"),
    ("+del", None, "command del"),
    ("+hset", None, "command hset"),
    ("+hget", None, "command hget"),
    ("+xadd", None, "command xadd"),
    ("+xrevrange", None, "command xrevrange"),
    ("+pexpire", None, "command pexpire"),
    ("+psubscribe", None, "command psubscribe"),
    ("%R~quantum:marketstate:*", None, "read access to keys quantum:marketstate:*"),
    ("%R~quantum:risk:proposal:*", None, "read access to keys quantum:risk:proposal:*"),
    ("%R~quantum:state:positions:*", None, "read access to keys quantum:state:positions:*"),
    (_PROPOSALS, None, "read access to keys quantum:harvest:proposal:*"),
    (_PROPOSALS, "%R" + _PROPOSALS, "write access to keys quantum:harvest:proposal:*"),
    (_STREAM, "%R" + _STREAM, "write access to the stream quantum:stream:harvest.proposal"),
    (_LIVENESS, None, f"write access to the liveness key quantum:harvest:publisher:{INSTANCE}"),
    *(
        (f"&{pattern}", None, f"channel pattern {pattern} (the ACL needs &{pattern})")
        for pattern in (
            "__keyspace@0__:quantum:marketstate:*",
            "__keyspace@0__:quantum:risk:proposal:*",
            "__keyspace@0__:quantum:state:positions:*",
            f"__keyspace@0__:quantum:harvest:publisher:{INSTANCE}",
        )
    ),
]
# these run `harvest-async run` as a subprocess; the others call `serve`
IN_A_SUBPROCESS = {"+client|setname", "+multi", "&__keyspace@0__:quantum:marketstate:*"}


def without(rule: str, replacement: str | None) -> list[str]:
    rules = documented_acl()
    assert rule in rules, f"{rule} is not in the documented ACL"
    index = rules.index(rule)
    return rules[:index] + ([replacement] if replacement else []) + rules[index + 1 :]


@pytest.mark.parametrize(
    ("rule", "replacement", "named"),
    SWEEP,
    ids=[f"{r}->{n}" if n else r for r, n, _ in SWEEP],
)
async def test_a_missing_permission_stops_the_start_naming_it(
    redis_url: str, rule: str, replacement: str | None, named: str
) -> None:
    async with connected(redis_url) as admin:
        if await is_redis_6(admin):
            if "%R~" in rule + (replacement or ""):
                pytest.skip("Redis 6.2 has no read-only key permissions (%R~)")
            if rule == "+evalsha_ro":
                pytest.skip("Redis 6.2 has no EVALSHA_RO: +evalsha serves reads and writes")
            # its NOPERM names only the container command: 'client', not 'client|setname'
            named = for_redis_6(named).split("|")[0]
        rules = without(rule, replacement)
        if rule == "+evalsha":  # on 6.2 the reads' +evalsha_ro is +evalsha too
            rules = [r for r in rules if r != "+evalsha_ro"]
        user = await create_user(admin, rules)
        await put_inputs(admin)  # something to publish, were it to start
        url = user_url(redis_url, user)
        if rule in IN_A_SUBPROCESS:
            line = await _run_cli(url)
        else:
            with pytest.raises(PermissionDenied) as info:
                with anyio.fail_after(10):
                    await serve(make_settings(url), handle_signals=False)
            line = str(info.value)
        assert line.removeprefix("harvest-async: ").startswith(f"permission denied: {named}"), line
        assert "docs/operations.md" in line
        assert await nothing_written(admin)


async def _run_cli(url: str) -> str:
    """`harvest-async run` as a subprocess: exit 2 and one line on stderr, returned."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THETA_")}
    env.update(env_for(url))
    result = await anyio.run_process(
        [sys.executable, "-m", "harvest_async", "run"], env=env, check=False
    )
    stderr = result.stderr.decode().strip()
    assert result.returncode == 2, stderr
    assert len(stderr.splitlines()) == 1, stderr
    return stderr


# -- a permission taken away while running -----------------------------------------------


@pytest.mark.parametrize(
    ("rule", "named"),
    [
        # a read: a permission error (ERROR "permission denied: ..."), the work waits
        ("+evalsha_ro", "permission denied: command evalsha_ro while reading inputs"),
        # a write: Redis refuses it (WARNING with the server's words, as for OOM), the
        # refused symbols are retried with backoff
        ("+xadd", "Redis refuses proposal writes (NOPERM"),
        ("+evalsha", "Redis refuses proposal writes (NOPERM"),
    ],
)
async def test_a_permission_lost_while_running_is_logged_once_and_waited_for(
    redis_url: str, rule: str, named: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="harvest_async")
    async with connected(redis_url) as admin:
        if await is_redis_6(admin):
            rule, named = for_redis_6(rule), for_redis_6(named)
            if rule == "+evalsha":  # reads use EVALSHA there too: they are refused first
                named = "permission denied: command evalsha while reading inputs"
        rules = documented_acl()
        user = await create_user(admin, rules)
        await put_inputs(admin)
        async with running(make_settings(user_url(redis_url, user))):
            await wait_for(lambda: shows_pnl(admin, 0.0), "the first publish")
            await admin.execute_command("ACL", "SETUSER", user, "-" + rule[1:])
            await admin.hset(KEYS.position(SYM), mapping=position(5.0))  # type: ignore[arg-type]
            # retried with backoff (0.5, 1, 2 s ...) and logged once
            await wait_for(lambda: logged(caplog, named), f"the log line for {named}")
            await anyio.sleep(2.0)
            assert not await shows_pnl(admin, 5.0)
            await admin.execute_command("ACL", "SETUSER", user, rule)
            await wait_for(lambda: shows_pnl(admin, 5.0), "the publish once permitted", limit=8.0)
            # the all-clear is logged once the write returns: just after it shows in Redis
            recovered = (
                "permission granted again"
                if named.startswith("permission denied")
                else "Redis refuses proposal writes: cleared"
            )
            await wait_for(lambda: logged(caplog, recovered), "the all-clear in the log")
            lines = [r for r in caplog.records if named in r.getMessage()]
            assert len(lines) == 1, [r.getMessage() for r in lines]
            # logged once the write's reply is in, just after the hash shows it
            if named.startswith("permission denied"):
                assert lines[0].levelno == logging.ERROR
            else:
                assert rule[1:] in lines[0].getMessage()  # the server names the command
                assert lines[0].levelno == logging.WARNING
        entries = await audit(admin)
        seqs = [e["seq"] for e in entries]
        assert len(seqs) == len(set(seqs)), entries  # no audit entry twice
        assert [e["position_unrealized_pnl"] for e in entries][-1] == repr(5.0)


async def test_multi_lost_while_running_stops_the_liveness_refresh_not_the_writes(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """MULTI/EXEC serves the liveness refresh (and batches of several proposals): without
    it the refresh is denied, logged once, while single writes, atomic by themselves,
    go on; once MULTI is back, so is the refresh."""
    caplog.set_level(logging.INFO, logger="harvest_async")
    named = "permission denied: command multi while liveness write"
    async with connected(redis_url) as admin:
        user = await create_user(admin, documented_acl())
        await put_inputs(admin)
        settings = settings_from_env(
            {**env_for(user_url(redis_url, user)), "LIVENESS_TTL_SEC": "1.5"}
        )
        async with running(settings):
            await wait_for(lambda: shows_pnl(admin, 0.0), "the first publish")
            await admin.execute_command("ACL", "SETUSER", user, "-multi")
            await wait_for(lambda: logged(caplog, named), "the denied liveness refresh")
            await admin.hset(KEYS.position(SYM), mapping=position(5.0))  # type: ignore[arg-type]
            await wait_for(lambda: shows_pnl(admin, 5.0), "a publish without MULTI")
            await admin.execute_command("ACL", "SETUSER", user, "+multi")
            await wait_for(lambda: logged(caplog, "permission granted again"), "the refresh")
        assert len([r for r in caplog.records if named in r.getMessage()]) == 1
