"""systemd's notify protocol, end to end: `harvest-async run` as a subprocess with
NOTIFY_SOCKET and WATCHDOG_USEC in its environment, and a unix datagram socket standing in
for systemd. READY=1 comes after the first full pass, WATCHDOG=1 keeps coming from the event
loop at a third of the watchdog period or faster, STOPPING=1 on SIGTERM, then exit 0."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

WATCHDOG_USEC = 600_000  # 0.6 s: pings at least every 0.2 s


def receive(sock: socket.socket, until: float) -> list[str]:
    out: list[str] = []
    while time.monotonic() < until:
        sock.settimeout(max(0.01, until - time.monotonic()))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            break
        out.append(data.decode())
    return out


def test_ready_watchdog_stopping(redis_url: str, tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_socket = str(tmp_path / "notify.sock")  # systemd uses /run/systemd/notify
    sock.bind(notify_socket)
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "NOTIFY_SOCKET": notify_socket,
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        "INSTANCE": "sdnotify-test",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "harvest_async", "run"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        messages: list[str] = []
        deadline = time.monotonic() + 15
        while not any("READY=1" in m for m in messages) and time.monotonic() < deadline:
            messages += receive(sock, min(deadline, time.monotonic() + 0.2))
            assert proc.poll() is None, proc.communicate()[1].decode()
        ready = [m for m in messages if "READY=1" in m]
        assert ready, f"no READY=1 within 15 s; got {messages}"
        assert "STATUS=publishing" in ready[0]

        # the watchdog keeps being pinged (every WATCHDOG_USEC / 3), always well inside
        # WATCHDOG_USEC; the margin allows for a loaded CI machine's scheduling jitter
        window = 1.0
        pings_at: list[float] = []
        end = time.monotonic() + window
        while time.monotonic() < end:
            for m in receive(sock, min(end, time.monotonic() + 0.1)):
                messages.append(m)
                if "WATCHDOG=1" in m:
                    pings_at.append(time.monotonic())
        assert len(pings_at) >= 3, f"{len(pings_at)} WATCHDOG=1 in {window} s"
        gaps = [b - a for a, b in itertools.pairwise(pings_at)]
        assert max(gaps) < WATCHDOG_USEC / 1e6 * 0.8, gaps
        assert any(m.startswith("STATUS=") and "symbols" in m for m in messages)

        proc.send_signal(signal.SIGTERM)
        tail: list[str] = []
        deadline = time.monotonic() + 5
        while not any("STOPPING=1" in m for m in tail) and time.monotonic() < deadline:
            tail += receive(sock, min(deadline, time.monotonic() + 0.1))
        code = proc.wait(timeout=10)
        stopping = [m for m in tail if "STOPPING=1" in m]
        assert stopping, f"no STOPPING=1 after SIGTERM; got {tail}"
        assert code == 0, proc.communicate()[1].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        sock.close()
