"""`harvest-async demo`: the README's first command, as CI runs it (non-interactive)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from harvest_async.tools.demo import DEMO_PREFIX


def run_demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "REDIS_SERVER")}
    return subprocess.run(
        [sys.executable, "-m", "harvest_async", "demo", *args],
        env={**environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_demo_with_duration_prints_proposals_and_cleans_up() -> None:
    done = run_demo("--duration", "8")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Traceback" not in done.stderr
    first = out.splitlines()[0]
    assert first.startswith("demo: 11 symbols (5 scripted, 6 random), embedded ")
    # the proposals it saw: counts, per-symbol actions, the final table
    publishes = int(re.search(r"service: (\d+) publishes", out).group(1))  # type: ignore[union-attr]
    assert publishes >= 11  # at least every symbol's startup proposal
    assert "actions published:" in out
    assert "proposals seen per symbol" in out
    assert "final proposals in Redis:" in out
    assert re.search(r"^  BTCUSDT +\d+ +\d+  (NONE|PARTIAL|FULL|RETRACTED)", out, re.M)
    assert re.search(r"(NONE|PARTIAL_\d\d|FULL_CLOSE_PROPOSED) +[+-]\d+\.\d\d", out)
    # the embedded server's directory is gone
    removed = re.search(r"removed (/\S+)", out)
    assert removed is not None
    assert not Path(removed.group(1)).exists()


@pytest.mark.slow
def test_demo_scripted_symbols_tell_their_stories() -> None:
    """The ladder, the profit lock, the regime collapse, the close and the bad input, as
    published by the real service (stages of 1.5 s, so one cycle fits in 11 s)."""
    done = run_demo("--duration", "11", "--step", "1.5", "--symbol-count", "2")
    assert done.returncode == 0, done.stderr
    seen = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^  (DEMO-\S+) +\d+ +\d+  (.*)$", done.stdout, re.M)
    }
    assert "NONE > PARTIAL_25+SL > PARTIAL_50+SL > PARTIAL_75+SL" in seen["DEMO-LADDER"]
    assert "NONE > NONE+SL > NONE" in seen["DEMO-LOCK"]
    assert "PARTIAL_25+SL > FULL_CLOSE_PROPOSED+SL > PARTIAL_25+SL" in seen["DEMO-REGIME"]
    assert "PARTIAL_25+SL > RETRACTED > NONE" in seen["DEMO-CLOSE"]
    assert seen["DEMO-BADDATA"].startswith(
        "PARTIAL_25+SL > RETRACTED > PARTIAL_25+SL > RETRACTED > PARTIAL_25+SL"
    )
    # the bad input is named, in the service's own words
    assert "DEMO-BADDATA: ok -> invalid_marketstate (sigma is not a number ('n/a'))" in (
        done.stdout + done.stderr
    )
    assert "scripted symbols (the others are random):" in done.stdout


@pytest.mark.slow
def test_demo_against_a_given_server_uses_its_own_namespace(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        client.hset("quantum:state:positions:BTCUSDT", mapping={"side": "FLAT"})
        done = run_demo("--duration", "2", "--symbol-count", "3", env={"REDIS_URL": redis_url})
        assert done.returncode == 0, done.stderr
        assert "Redis at " in done.stdout.splitlines()[0]
        assert "service: " in done.stdout
        # nothing of the demo is left; the real keys were never touched
        assert client.keys(DEMO_PREFIX + "*") == []
        assert client.keys("*") == ["quantum:state:positions:BTCUSDT"]
        assert client.hgetall("quantum:state:positions:BTCUSDT") == {"side": "FLAT"}
    finally:
        client.close()


def test_demo_without_any_server_says_how_to_get_one(tmp_path: Path) -> None:
    done = run_demo("--duration", "1", env={"REDIS_SERVER": str(tmp_path / "no-such-server")})
    assert done.returncode == 1
    assert done.stderr.startswith("harvest-async: demo: REDIS_SERVER=")
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_interactive_demo_in_tmux_stops_on_ctrl_c_and_cleans_up(tmp_path: Path) -> None:
    """`harvest-async demo` with a terminal: the live watch view, then Ctrl-C."""
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("tmux is not installed (apt-get install tmux; .ci/run installs it)")
    base = [tmux, "-S", str(tmp_path / "tmux.sock")]
    marker = tmp_path / "exit-code"

    def screen() -> str:
        return subprocess.run(
            [*base, "capture-pane", "-p", "-t", "demo"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout

    def wait_for(needle: str, limit: float = 20.0) -> str:
        deadline = time.monotonic() + limit
        text = ""
        while time.monotonic() < deadline:
            text = screen()
            if needle in text:
                return text
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {needle!r}; screen:\n{text}")

    command = (
        f"env -u REDIS_URL -u REDIS_SERVER TERM=xterm-256color "
        f"{shlex.quote(sys.executable)} -m harvest_async demo --symbol-count 4; "
        f"echo $? > {shlex.quote(str(marker))}; echo DEMO-EXITED; sleep 30"
    )
    subprocess.run(
        [*base, "new-session", "-d", "-s", "demo", "-x", "150", "-y", "40", command],
        timeout=10,
        check=True,
    )
    # a detached session keeps the requested size only with a manual window size
    subprocess.run([*base, "set-option", "-t", "demo", "window-size", "manual"], check=True)
    subprocess.run([*base, "resize-window", "-t", "demo", "-x", "150", "-y", "40"], check=True)
    try:
        wait_for("recent changes")
        live = wait_for("unix:///")  # in the header: drawn at the full width
        assert "harvest-async watch" in live and "mode=notify" in live
        assert re.search(r"^(BTCUSDT|ETHUSDT|SOLUSDT|BNBUSDT) ", live, re.M), live
        workdir = re.search(r"unix://(/\S*?harvest-redis-\w+)/", live)
        assert workdir is not None, live
        assert Path(workdir.group(1)).is_dir()

        subprocess.run([*base, "send-keys", "-t", "demo", "C-c"], timeout=10, check=True)
        done = wait_for("DEMO-EXITED")
        assert marker.read_text().strip() == "0"
        assert "DEMO-LADDER" in done  # the summary after the live view
        assert not Path(workdir.group(1)).exists()
    finally:
        subprocess.run([*base, "kill-server"], capture_output=True, timeout=10, check=False)
