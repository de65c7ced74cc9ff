"""INPUT_STREAMS on one server (every flavour): entries name the symbols to look at again.

The server runs without keyspace notifications and the service with a 10-minute poll and
heartbeat, so only stream entries can tell it that an input changed. A reconnect resumes
after the last entry read; a stream that restarted below it (deleted and written again
with lower IDs, as a replica promoted without our last entries would be) is resumed from
its newest entry, so its next entries are not skipped.
"""

from __future__ import annotations

import anyio
import redis.asyncio as aioredis

from tests.support.live import (
    SYM,
    connected,
    make_settings,
    put_inputs,
    running,
    shows_pnl,
    wait_for,
)

STREAMS = ["quantum:stream:marketstate", "quantum:stream:risk.proposal"]


async def _kill_stream_connection(admin: aioredis.Redis) -> None:
    clients = await admin.client_list()
    ids = [c["id"] for c in clients if c.get("name") == "harvest-async-streams"]
    assert ids, "no input stream connection"
    for client_id in ids:
        await admin.client_kill_filter(_id=client_id)


async def test_entries_publish_and_a_reconnect_resumes(redis_url: str) -> None:
    settings = make_settings(
        redis_url,
        INPUT_STREAMS=",".join(STREAMS),
        POLL_INTERVAL_SEC="600",
        MAX_PUBLISH_AGE_SEC="600",
    )
    async with connected(redis_url) as admin:
        await admin.config_set("notify-keyspace-events", "")
        await put_inputs(admin, pnl=1.0)
        await admin.xadd(STREAMS[1], {"symbol": "OTHER"})  # an older entry: not re-read
        async with running(settings) as runner:
            await wait_for(lambda: shows_pnl(admin, 1.0), "the startup pass")
            await anyio.sleep(0.5)  # past the poll mode's first reconcile (at 0.25 s)
            await put_inputs(admin, pnl=2.0)
            await anyio.sleep(1.0)
            assert await shows_pnl(admin, 1.0)  # no entry: not seen
            for value, stream in ((3.0, STREAMS[0]), (5.0, STREAMS[1])):
                await put_inputs(admin, pnl=value)
                await admin.xadd(stream, {"symbol": SYM})
                await wait_for(lambda v=value: shows_pnl(admin, v), f"the publish of {value}")
            # the stream restarts below the last ID read: its next entries are still read
            await admin.delete(STREAMS[0])
            passes = runner.passes
            await _kill_stream_connection(admin)

            async def resynced() -> bool:
                return runner.passes > passes

            await wait_for(resynced, "the reconnect's gap")
            await anyio.sleep(0.5)
            await put_inputs(admin, pnl=9.0)
            await admin.xadd(STREAMS[0], {"symbol": SYM}, id="1-1")
            await wait_for(lambda: shows_pnl(admin, 9.0), "the publish from the restarted stream")
