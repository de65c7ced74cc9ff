"""`harvest-async watch` in a real terminal: tmux runs it, the test changes proposals in
Redis, reads the screen with capture-pane, presses Ctrl-C with send-keys and checks that the
process exited 0 and gave the terminal back (alternate screen left, cursor shown).

`test_watch_never_shows_stale_advice_as_live` turns off what makes the rows live advice
(the publisher's liveness key, keyspace notifications, a proposal's valid_until, Redis
itself) one by one and checks that the screen says so, and recovers.

Also the pure renderer and `--once` (what scripts use)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from harvest_async.core.keys import Keys
from harvest_async.core.proposal import PROPOSAL_FIELDS, SCHEMA_VERSION
from harvest_async.tools.embedded_server import EmbeddedRedis
from harvest_async.tools.watch import WatchModel, render

KEYS = Keys()
TMUX = shutil.which("tmux")


def proposal(
    symbol: str,
    action: str,
    r_net: float,
    kill: float,
    sl: str = "None",
    *,
    at: float | None = None,
    **extra: str,
) -> dict[str, str]:
    fields = dict.fromkeys(PROPOSAL_FIELDS, "0.0")
    fields.update(
        symbol=symbol,
        harvest_action=action,
        R_net=repr(r_net),
        kill_score=repr(kill),
        new_sl_proposed=sl,
        trigger="change",
        position_side="LONG",
        ts_epoch=repr(time.time() if at is None else at),
        marketstate_age_sec="",
        position_snapshot_age_sec="",
        schema_version=SCHEMA_VERSION,
        valid_until="",  # no expiry unless a test says so
    )
    fields.update(extra)
    return fields


def alive(client: redis.Redis, instance: str = "vps-1") -> None:
    """A publisher's liveness key, as the service writes it."""
    key = KEYS.liveness(instance)
    client.hset(key, mapping={"instance": instance, "pid": "42", "host": "vps",
                              "last_beat_epoch": repr(time.time())})  # fmt: skip
    client.expire(key, 60)


def publish(client: redis.Redis, fields: dict[str, str]) -> None:
    key = KEYS.proposal(fields["symbol"])
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.xadd(KEYS.stream, {"event": "publish", **fields})  # type: ignore[dict-item]
        pipe.execute()


def retract(client: redis.Redis, symbol: str, reason: str) -> None:
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(KEYS.proposal(symbol))
        pipe.xadd(KEYS.stream, {"event": "retract", "symbol": symbol, "reason": reason})
        pipe.execute()


class Tmux:
    """A private tmux server (its own socket): never touches the user's sessions."""

    def __init__(self, socket_path: Path) -> None:
        assert TMUX is not None
        self.base = [TMUX, "-S", str(socket_path)]

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout

    def screen(self, *, escapes: bool = False) -> str:
        return self("capture-pane", "-p", *(["-e"] if escapes else []), "-t", "watch")

    def wait_for(self, predicate: Callable[[str], bool], what: str, limit: float = 10.0) -> str:
        deadline = time.monotonic() + limit
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{text}")


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    if TMUX is None:
        pytest.skip("tmux is not installed (apt-get install tmux; .ci/run installs it)")
    t = Tmux(tmp_path / "tmux.sock")
    yield t
    subprocess.run([*t.base, "kill-server"], capture_output=True, timeout=10, check=False)


def test_watch_live_in_tmux(redis_url: str, tmux: Tmux, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        alive(client)
        publish(client, proposal("BTCUSDT", "PARTIAL_25", 2.31, 0.52, "64000.5"))
        publish(client, proposal("ETHUSDT", "FULL_CLOSE_PROPOSED", 0.4, 0.81))
        publish(client, proposal("SOLUSDT", "NONE", -0.2, 0.5))
        marker = tmp_path / "exit-code"
        command = (
            f"{shlex.quote(sys.executable)} -m harvest_async watch "
            f"--redis-url {shlex.quote(redis_url)}; "
            f"echo $? > {shlex.quote(str(marker))}; echo WATCH-EXITED; sleep 30"
        )
        env = "LOG_LEVEL=WARNING TERM=xterm-256color"
        tmux(
            "new-session", "-d", "-s", "watch", "-x", "120", "-y", "30", f"env {env} {command}"
        )  # fmt: skip
        # a detached session keeps the requested size only with a manual window size
        tmux("set-option", "-t", "watch", "window-size", "manual")
        tmux("resize-window", "-t", "watch", "-x", "120", "-y", "30")

        screen = tmux.wait_for(
            lambda s: "SOLUSDT" in s and "mode=notify" in s and " AGE" in s, "the table"
        )
        assert "3 proposals, 0 retracted" in screen
        for needle in ("BTCUSDT", "PARTIAL_25", "+2.31", "0.520", "64000.5", "FULL_CLOSE_PROPOSED"):
            assert needle in screen, needle
        header = next(line for line in screen.splitlines() if line.startswith("SYMBOL"))
        assert header.split() == [
            "SYMBOL", "ACTION", "R_NET", "KILL", "NEW_SL", "AGE", "MKT", "POS", "TRIGGER", "SIDE"
        ]  # fmt: skip
        assert "publisher: vps-1 (beat " in screen
        assert "NO LIVE PUBLISHER" not in screen
        colored = tmux.screen(escapes=True)
        eth = next(line for line in colored.splitlines() if "FULL_CLOSE_PROPOSED" in line)
        assert "\x1b[" in eth and "31" in eth, repr(eth)  # red: a full close is proposed

        # live changes arrive through keyspace notifications
        publish(client, proposal("BTCUSDT", "PARTIAL_50", 4.2, 0.55, "64100.0"))
        retract(client, "SOLUSDT", "stale_marketstate: market state is 900 s old")
        screen = tmux.wait_for(
            lambda s: "PARTIAL_50" in s and "stale_marketstate" in s, "the change and retraction"
        )
        sol = next(line for line in screen.splitlines() if line.startswith("SOLUSDT"))
        assert "RETRACTED" in sol and "stale_marketstate: market state is 900 s old" in sol
        assert "2 proposals, 1 retracted" in screen
        # the change log shows the retraction as it happened
        log = screen.split("recent changes", 1)[1].splitlines()
        assert any(
            re.match(r"\d\d:\d\d:\d\d  SOLUSDT +RETRACTED +stale_marketstate", line) for line in log
        ), screen

        tmux("send-keys", "-t", "watch", "C-c")
        screen = tmux.wait_for(lambda s: "WATCH-EXITED" in s, "watch to exit")
        assert marker.read_text().strip() == "0"
        # the alternate screen is gone: the table is no longer on the screen
        assert "SYMBOL       ACTION" not in screen
        assert "Traceback" not in screen
        cursor_visible = tmux("display-message", "-p", "-t", "watch", "#{cursor_flag}").strip()
        assert cursor_visible == "1"
        alternate = tmux("display-message", "-p", "-t", "watch", "#{alternate_on}").strip()
        assert alternate == "0"
    finally:
        client.close()


def start_watch(tmux: Tmux, url: str, tmp_path: Path, width: int, height: int = 30) -> Path:
    marker = tmp_path / "exit-code"
    command = (
        f"{shlex.quote(sys.executable)} -m harvest_async watch --redis-url {shlex.quote(url)}; "
        f"echo $? > {shlex.quote(str(marker))}; echo WATCH-EXITED; sleep 30"
    )
    tmux("new-session", "-d", "-s", "watch", "-x", str(width), "-y", str(height),
         f"env TERM=xterm-256color {command}")  # fmt: skip
    tmux("set-option", "-t", "watch", "window-size", "manual")
    tmux("resize-window", "-t", "watch", "-x", str(width), "-y", str(height))
    return marker


def row(screen: str, symbol: str) -> str:
    """The symbol's line on the screen ("" while it is not there)."""
    return next((line for line in screen.splitlines() if line.startswith(symbol + " ")), "")


def test_watch_never_shows_stale_advice_as_live(
    fresh_redis_server: EmbeddedRedis, tmux: Tmux, tmp_path: Path
) -> None:
    server = fresh_redis_server
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        alive(client)
        written = time.time() - 90  # an old proposal: its age is its own, not watch's
        ages = {"marketstate_age_sec": "12.0", "position_snapshot_age_sec": "3.0"}
        publish(
            client, proposal("BTCUSDT", "PARTIAL_25", 2.31, 0.52, "64000.5", at=written, **ages)
        )
        marker = start_watch(tmux, server.url, tmp_path, width=80)

        # 80 columns: AGE and the input ages stay, the least useful columns go
        screen = tmux.wait_for(lambda s: "BTCUSDT" in s and "mode=notify" in s, "the table")
        header = next(line for line in screen.splitlines() if line.startswith("SYMBOL"))
        assert header.split() == ["SYMBOL", "ACTION", "R_NET", "KILL", "NEW_SL", "AGE", "MKT",
                                  "POS"]  # fmt: skip
        cells = row(screen, "BTCUSDT").split()
        assert cells[:5] == ["BTCUSDT", "PARTIAL_25", "+2.31", "0.520", "64000.5"]
        age, mkt, pos = cells[5:8]
        assert age.startswith("1m3") and mkt.startswith("1m4") and pos.startswith("1m3"), cells
        # the change log stamps it with the proposal's time, not with watch's start
        assert f"{time.strftime('%H:%M:%S', time.gmtime(written))}  BTCUSDT" in screen
        assert "NO LIVE PUBLISHER" not in screen

        # the publisher stops: its liveness key goes; the rows are no longer live advice
        client.delete(KEYS.liveness("vps-1"))
        screen = tmux.wait_for(lambda s: "NO LIVE PUBLISHER" in s, "the publisher-down banner")
        assert "publisher: none alive" in screen
        btc = next(x for x in tmux.screen(escapes=True).splitlines() if "BTCUSDT  " in x)
        assert "\x1b[2mPARTIAL_25" in btc, repr(btc)  # dimmed, not green
        alive(client, "vps-2")
        tmux.wait_for(lambda s: "NO LIVE PUBLISHER" not in s and "vps-2" in s, "a publisher back")

        # notifications off: watch notices within a few seconds and polls
        client.config_set("notify-keyspace-events", "")
        tmux.wait_for(lambda s: "mode=poll" in s, "poll mode", limit=8)
        publish(client, proposal("BTCUSDT", "PARTIAL_50", 4.2, 0.55, "64100.0"))
        tmux.wait_for(lambda s: "PARTIAL_50" in row(s, "BTCUSDT"), "the change, polled", limit=4)
        # ... and back
        client.config_set("notify-keyspace-events", server.notify_keyspace_events)
        tmux.wait_for(lambda s: "mode=notify" in s, "notify mode again", limit=8)
        publish(client, proposal("BTCUSDT", "PARTIAL_75", 6.2, 0.55, "64100.0"))
        tmux.wait_for(lambda s: "PARTIAL_75" in row(s, "BTCUSDT"), "the change, notified", 2)

        # a proposal past its valid_until is no advice, whatever it says
        publish(client, proposal("ETHUSDT", "FULL_CLOSE_PROPOSED", 0.4, 0.81,
                                 valid_until=repr(time.time() + 1.5)))  # fmt: skip
        screen = tmux.wait_for(lambda s: " exp" in row(s, "ETHUSDT"), "the expiry", limit=6)
        assert "past valid_until" in screen
        # ... and when its key expires (no publisher refreshed its TTL), it is gone
        client.pexpire(KEYS.proposal("ETHUSDT"), 100)
        tmux.wait_for(
            lambda s: "RETRACTED" in row(s, "ETHUSDT") and "expired: " in row(s, "ETHUSDT"),
            "the expired key",
        )

        # Redis goes away: the rows stay as last seen, marked, with the whole error
        server.kill()
        screen = tmux.wait_for(lambda s: "REDIS UNREACHABLE" in s, "the outage banner")
        banner = screen.split("REDIS UNREACHABLE", 1)[1].split("SYMBOL", 1)[0]
        assert "ConnectionError" in banner and "retrying" in banner
        assert all(len(line) <= 80 for line in screen.splitlines())
        assert "PARTIAL_75" in row(screen, "BTCUSDT")  # as last seen
        server.start()
        client.close()
        client = redis.Redis.from_url(server.url, decode_responses=True)
        alive(client)
        screen = tmux.wait_for(
            lambda s: "REDIS UNREACHABLE" not in s and "mode=notify" in s, "recovery", limit=15
        )
        # the restarted server lost the proposals: shown as gone, not as live advice
        assert "RETRACTED" in row(screen, "BTCUSDT")

        tmux("send-keys", "-t", "watch", "C-c")
        tmux.wait_for(lambda s: "WATCH-EXITED" in s, "watch to exit")
        assert marker.read_text().strip() == "0"
    finally:
        client.close()


def test_watch_once_sorts_and_filters(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        publish(client, proposal("AAAUSDT", "NONE", 0.1, 0.50))
        publish(client, proposal("BTCUSDT", "FULL_CLOSE_PROPOSED", 0.4, 0.81))
        publish(client, proposal("BTCDOWN", "PARTIAL_50", 4.2, 0.55))
        retract(client, "CCCUSDT", "flat: position side is FLAT")
    finally:
        client.close()

    def once(*args: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-m", "harvest_async", "watch", "--once", "--redis-url", redis_url,
             *args],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        table = done.stdout.split("\nSYMBOL ", 1)[1].splitlines()[1:]
        return [line.split()[0] for line in table if line.strip()]

    assert once() == ["AAAUSDT", "BTCDOWN", "BTCUSDT", "CCCUSDT"]
    assert once("--sort", "kill") == ["BTCUSDT", "BTCDOWN", "AAAUSDT", "CCCUSDT"]
    assert once("--sort", "action") == ["BTCUSDT", "BTCDOWN", "AAAUSDT", "CCCUSDT"]
    assert once("--filter", "btc*") == ["BTCDOWN", "BTCUSDT"]
    assert once("--filter", "FULL_CLOSE*,retracted") == ["BTCUSDT", "CCCUSDT"]


def test_watch_once_prints_a_plain_snapshot(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        publish(client, proposal("BTCUSDT", "PARTIAL_75", 6.5, 0.5))
        retract(client, "ETHUSDT", "flat: position side is FLAT")
    finally:
        client.close()
    done = subprocess.run(
        [sys.executable, "-m", "harvest_async", "watch", "--once", "--redis-url", redis_url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stdout  # not a terminal: no escape codes
    lines = done.stdout.splitlines()
    assert "1 proposals, 1 retracted" in lines[0]
    btc = next(line for line in lines if line.startswith("BTCUSDT"))
    assert btc.split()[:4] == ["BTCUSDT", "PARTIAL_75", "+6.50", "0.500"]
    eth = next(line for line in lines if line.startswith("ETHUSDT"))
    assert "RETRACTED" in eth and "flat: position side is FLAT" in eth


def test_live_view_refuses_a_pipe() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "harvest_async", "watch", "--redis-url", "redis://127.0.0.1:1/0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "use --once" in done.stderr


def test_render_fits_the_width_and_colours_actions() -> None:
    model = WatchModel()
    now = 1_700_000_000.0
    for i in range(40):
        model.apply(f"SYM{i:02d}", proposal(f"SYM{i:02d}", "NONE", 0.1, 0.5), now)
    model.apply("ZZZ", proposal("ZZZ", "FULL_CLOSE_PROPOSED", 1.0, 0.9), now)
    model.retract("YYY", "invalid_marketstate: sigma is missing", now)
    lines = render(model, now + 5, width=60, height=20, color=False)
    assert len(lines) <= 20
    assert all(len(line) <= 60 for line in lines)
    assert any(line.startswith("... and ") for line in lines)
    colored = render(model, now + 5, width=200, height=80, color=True)
    zzz = next(line for line in colored if line.startswith("ZZZ"))
    assert "\x1b[1;31mFULL_CLOSE_PROPOSED" in zzz
    yyy = next(line for line in colored if line.startswith("YYY"))
    assert "\x1b[35mRETRACTED" in yyy and "sigma is missing" in yyy


def test_render_keeps_age_at_80_columns_and_drops_the_least_useful() -> None:
    model = WatchModel()
    now = 1_700_000_000.0
    model.apply("BTCUSDT", proposal("BTCUSDT", "FULL_CLOSE_PROPOSED", 1.0, 0.9, at=now - 75), now)
    for width, columns in (
        (80, ["SYMBOL", "ACTION", "R_NET", "KILL", "NEW_SL", "AGE", "MKT", "POS"]),
        (60, ["SYMBOL", "ACTION", "R_NET", "KILL", "AGE"]),
    ):
        lines = render(model, now, width=width)
        header = next(line for line in lines if line.startswith("SYMBOL"))
        assert header.split() == columns
        assert row("\n".join(lines), "BTCUSDT").split()[columns.index("AGE")] == "1m15s"


def test_render_wraps_a_long_problem_instead_of_cutting_it() -> None:
    model = WatchModel(publishers=[])
    model.redis_down_since = 1_700_000_000.0
    model.status = "ConnectionError: " + "x" * 150 + " THE END"
    lines = render(model, 1_700_000_005.0, width=60)
    assert all(len(line) <= 60 for line in lines)
    text = " ".join(lines)
    assert "REDIS UNREACHABLE for 5 s" in text and "THE END" in text
    assert "publisher: unknown while Redis is unreachable" in text
