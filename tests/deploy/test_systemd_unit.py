"""The unit from systemd/, unchanged, under a real systemd PID 1 (in a container), with the
project installed the way docs/operations.md tells an operator and Debian's redis-server
beside it: READY, STATUS, the watchdog, a clean stop, no restart on a configuration error,
every hardening option in force with uvloop and hiredis working under them, and the
journal, and a start while Redis is down that waits instead of failing.

The steps share one container (a module fixture) and run in file order.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .containers import ROOT, Container, sh, wait_for

pytestmark = [pytest.mark.deploy, pytest.mark.slow]

UNIT = "harvest-async"
UNIT_FILE = ROOT / "systemd" / "harvest-async.service"
ENV_FILE = "/etc/quantum/harvest-proposal.env"
LIVENESS = "quantum:harvest:publisher:systemd-test"
VENV_BIN = "/opt/harvest-async/.venv/bin"
PASSWORD = "systemd-" + os.urandom(9).hex()

# how `systemctl show` spells what the unit file says, where it differs
SHOWN_AS = {
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "SystemCallErrorNumber": "1",  # EPERM
    "UMask": "0077",
}


HARDENING = {
    "NoNewPrivileges", "CapabilityBoundingSet", "AmbientCapabilities", "ProtectSystem",
    "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateUsers", "PrivateIPC",
    "ProtectHostname", "ProtectClock", "ProtectKernelTunables", "ProtectKernelModules",
    "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc", "RestrictAddressFamilies",
    "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality",
    "MemoryDenyWriteExecute", "RemoveIPC", "PrivateMounts", "KeyringMode", "DevicePolicy",
    "UMask", "SystemCallArchitectures", "SystemCallFilter", "SystemCallErrorNumber",
}  # fmt: skip


class Machine(Container):
    """The systemd container."""

    def show(self, *properties: str, unit: str = UNIT) -> dict[str, str]:
        wanted = [f"--property={p}" for p in properties] or ["--all"]  # --all: empty ones too
        out = self.exec("systemctl", "show", unit, *wanted)
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

    def prop(self, name: str, unit: str = UNIT) -> str:
        return self.show(name, unit=unit)[name]

    def redis(self, *args: str) -> str:
        return self.exec(
            "env", f"REDISCLI_AUTH={PASSWORD}", "redis-cli", "--no-auth-warning", *args
        ).stdout.strip()

    def journal(self, *args: str) -> str:
        return self.exec("journalctl", "-u", UNIT, "--no-pager", *args).stdout

    def set_env(self, name: str, value: str | None) -> None:
        """Set (or drop, value None) one variable of the env file."""
        self.exec("sed", "-i", f"/^{name}=/d", ENV_FILE)
        if value is not None:
            self.exec("sh", "-c", f"echo '{name}={value}' >> {ENV_FILE}")


def active_running(machine: Machine) -> bool:
    state = machine.show("ActiveState", "SubState")
    return state == {"ActiveState": "active", "SubState": "running"}


def unit_settings() -> list[tuple[str, str]]:
    """(key, value) of the unit's [Service] section, in order."""
    section, out = "", []
    for raw in UNIT_FILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            out.append((key, value))
    return out


@pytest.fixture(scope="module")
def machine(images: dict[str, str], wheelhouse: Path, unique: str) -> Iterator[Machine]:
    image = "harvest-async-systemd-test:local"
    sh(
        "docker", "build", "--quiet", "--build-arg", f"BASE_IMAGE={images['HARVEST_BASE_IMAGE']}",
        "-t", image, str(ROOT / "tests" / "deploy" / "systemd"), timeout=900,
    )  # fmt: skip
    # The recipe plus SYS_PTRACE, which a real PID 1 has and Docker drops: without
    # it systemd cannot set up PrivateUsers= together with ProtectProc=invisible (both in
    # our unit and in Debian's redis-server unit): "Failed to set up user namespacing: No
    # such file or directory", status 217/USER (seen with systemd 252, Docker 20.10).
    name = f"harvest-systemd-{unique}"
    sh("docker", "rm", "-f", name, check=False)
    cid = sh(
        "docker", "run", "-d", "--name", name,
        "--cap-add", "SYS_ADMIN", "--cap-add", "SYS_PTRACE",
        "--security-opt", "seccomp=unconfined", "--cgroupns=host",
        "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock",
        "-v", f"{ROOT}:/src:ro", image,
    ).stdout.strip()  # fmt: skip
    machine = Machine(cid)
    try:

        def system_state() -> str:  # empty until systemd answers on its socket
            done = machine.exec("systemctl", "is-system-running", "--wait", check=False)
            return done.stdout.strip()

        booted = wait_for("systemd to answer", system_state, timeout=120)
        failed = machine.exec("systemctl", "--failed", "--no-legend", check=False).stdout
        assert booted == "running", failed
        # systemd makes / a shared mount at boot, except in a container; without it the
        # credentials ramfs it mounts in a helper namespace never reaches the service, which
        # finds an empty root-only $CREDENTIALS_DIRECTORY (seen: PermissionError)
        machine.exec("mount", "--make-rshared", "/")
        started = time.monotonic()
        install = sh(
            "docker", "exec", "-e", f"REDIS_PASSWORD={PASSWORD}", cid,
            "/src/tests/deploy/systemd/install-as-operator.sh", check=False, timeout=300,
        )  # fmt: skip
        assert install.returncode == 0, install.stdout + install.stderr + machine.journal()
        print(f"systemd tier: installed and started in {time.monotonic() - started:.1f} s")
        yield machine
    finally:
        sh("docker", "stop", "--time", "20", cid, check=False, timeout=60)
        sh("docker", "rm", "-f", cid, check=False)


def test_the_unit_is_the_repository_file_unchanged(machine: Machine) -> None:
    installed = machine.exec("cat", f"/etc/systemd/system/{UNIT}.service").stdout
    assert installed == UNIT_FILE.read_text()
    assert machine.prop("FragmentPath") == f"/etc/systemd/system/{UNIT}.service"


def test_active_running_through_ready_with_a_status_line(machine: Machine) -> None:
    # `enable --now` of a Type=notify unit returns once READY=1 came (or the start failed)
    state = machine.show("Type", "ActiveState", "SubState", "NRestarts", "StatusText", "MainPID")
    assert state["Type"] == "notify"
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), machine.journal()
    assert state["NRestarts"] == "0"
    assert state["StatusText"], "the service sends STATUS="
    status = machine.exec("systemctl", "status", "--no-pager", UNIT, check=False).stdout
    assert "active (running)" in status
    assert re.search(r"Status: \".+\"", status), status
    # it really talks to Redis: a live liveness key with its pid
    beat = machine.redis("hget", LIVENESS, "pid")
    assert beat == state["MainPID"]


def test_every_hardening_option_is_in_force(machine: Machine) -> None:
    shown = machine.show()
    problems = []
    for key, value in unit_settings():
        if key not in HARDENING:
            continue
        want = SHOWN_AS.get(key, value)
        got = shown.get(key)
        if key == "SystemCallFilter":
            # systemd shows the resulting allow list; it must be a filter, not empty
            if not got or got.startswith("~"):
                problems.append((key, got))
            continue
        if key == "RestrictAddressFamilies":
            if set((got or "").split()) != set(value.split()):
                problems.append((key, got))
            continue
        if got != want:
            problems.append((key, want, got))
    assert problems == [], problems

    # and in the running process: no new privileges, a seccomp filter, no capabilities, a
    # mount namespace and a user namespace of its own
    pid = shown["MainPID"]
    status = machine.exec("cat", f"/proc/{pid}/status").stdout
    fields = dict(re.findall(r"^(\w+):\s+(.*)$", status, flags=re.M))
    assert fields["NoNewPrivs"] == "1"
    assert fields["Seccomp"] == "2"
    assert fields["CapBnd"] == fields["CapEff"] == "0000000000000000"
    for namespace in ("mnt", "user", "ipc", "uts"):
        ours = machine.exec("readlink", f"/proc/{pid}/ns/{namespace}").stdout
        init = machine.exec("readlink", f"/proc/1/ns/{namespace}").stdout
        assert ours != init, namespace
    user = machine.exec("ps", "-o", "user=", "-p", pid).stdout.strip()
    assert user == "harvest"


def test_uvloop_and_hiredis_work_under_the_hardening(machine: Machine) -> None:
    pid = machine.prop("MainPID")
    maps = machine.exec("cat", f"/proc/{pid}/maps").stdout
    assert re.search(r"/uvloop/loop\.cpython-\S+\.so", maps), "uvloop is not loaded"
    assert re.search(r"/hiredis/hiredis\.cpython-\S+\.so", maps), "hiredis is not loaded"
    # and the service does its work on them: simulated inputs become proposals
    machine.exec(
        "env", "REDIS_PASSWORD_FILE=/etc/quantum/redis-password",
        f"{VENV_BIN}/harvest-async", "simulate",
        "--symbol-count", "4", "--rate", "20", "--duration", "3",
        timeout=60,
    )  # fmt: skip

    def proposals() -> list[str]:
        return machine.redis("--scan", "--pattern", "quantum:harvest:proposal:*").split()

    wait_for("proposals from the service", proposals, timeout=30)
    assert int(machine.redis("xlen", "quantum:stream:harvest.proposal")) > 0
    assert machine.prop("NRestarts") == "0"
    assert "Traceback" not in machine.journal()


def test_the_journal_keeps_the_logs_with_levels_in_json(machine: Machine) -> None:
    """With LOG_FORMAT=json each journal entry of the unit is one JSON object with its level
    and fields (a WARNING for a bad input here), at the journal priority of its level."""
    machine.set_env("LOG_FORMAT", "json")
    try:
        machine.exec("systemctl", "restart", UNIT)
        since = machine.exec("date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
        write_bad_position(machine, "BADUSDT")

        def warning_logged() -> list[dict[str, str]]:
            lines = machine.journal("--since", since, "-o", "cat").splitlines()
            records = [json.loads(line) for line in lines if line.startswith("{")]
            return [r for r in records if r["level"] == "WARNING" and "BADUSDT" in r["msg"]]

        found = wait_for("a JSON WARNING about BADUSDT in the journal", warning_logged, 20)
        assert isinstance(found, list)
        assert found[0]["symbol"] == "BADUSDT" and found[0]["instance"] == "systemd-test"
        warnings = machine.journal("--since", since, "-p", "warning", "-o", "cat")
        assert '"symbol":"BADUSDT"' in warnings
    finally:
        machine.redis("del", position_key("BADUSDT"))
        machine.set_env("LOG_FORMAT", None)
        machine.exec("systemctl", "restart", UNIT)


def position_key(symbol: str) -> str:
    return f"quantum:state:positions:{symbol}"


def write_bad_position(machine: Machine, symbol: str) -> None:
    """A position with entry_price 0: the service retracts it with one WARNING."""
    now = machine.exec("date", "+%s").stdout.strip()
    machine.redis(
        "hset", f"quantum:marketstate:{symbol}", "sigma", "0.01", "ts", "0.4", "p_trend", "0.5",
        "p_mr", "0.3", "p_chop", "0.2", "ts_timestamp", now,
    )  # fmt: skip
    machine.redis(
        "hset", position_key(symbol), "symbol", symbol, "side", "LONG", "quantity", "1",
        "entry_price", "0", "unrealized_pnl", "1", "current_price", "1", "created_at", now,
        "ts_epoch", now,
    )  # fmt: skip


def test_the_watchdog_restarts_a_frozen_service(machine: Machine) -> None:
    before = machine.show("MainPID", "NRestarts", "WatchdogUSec")
    assert before["WatchdogUSec"] == "30s"
    started = time.monotonic()
    machine.exec("kill", "-STOP", before["MainPID"])  # the event loop can no longer ping

    def restarted() -> bool:
        now = machine.show("MainPID", "NRestarts")
        return now["NRestarts"] == str(int(before["NRestarts"]) + 1) and active_running(machine)

    wait_for("a watchdog restart", restarted, timeout=75, every=1)
    print(f"watchdog: frozen -> running again in {time.monotonic() - started:.1f} s")
    assert machine.prop("MainPID") != before["MainPID"]
    assert "Watchdog timeout" in machine.journal("-n", "200")


def test_stop_exits_within_the_grace_and_deletes_the_liveness_key(machine: Machine) -> None:
    assert machine.redis("exists", LIVENESS) == "1"
    started = time.monotonic()
    machine.exec("systemctl", "stop", UNIT, timeout=60)
    took = time.monotonic() - started
    state = machine.show("ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    assert state["ActiveState"] == "inactive"
    assert state["Result"] == "success"  # exited by itself: no SIGKILL after TimeoutStopSec
    assert (state["ExecMainCode"], state["ExecMainStatus"]) == ("1", "0")  # CLD_EXITED, 0
    assert took < 5 + 3, f"stop took {took:.1f} s (SHUTDOWN_GRACE_SEC is 5)"
    assert machine.redis("exists", LIVENESS) == "0"
    machine.exec("systemctl", "reset-failed", UNIT, check=False)
    machine.exec("systemctl", "start", UNIT)
    assert active_running(machine)


def test_a_configuration_error_exits_2_and_is_not_restarted(machine: Machine) -> None:
    machine.set_env("PUBLISH_INTERVAL_SEC", "soon")
    try:
        restarts = int(machine.prop("NRestarts"))
        failed = machine.exec("systemctl", "restart", UNIT, check=False)
        assert failed.returncode != 0
        state = machine.show("ActiveState", "ExecMainStatus", "NRestarts", "Result")
        assert state["ExecMainStatus"] == "2"
        # the proof of "not restarted" is an absence: watch for three RestartSec periods
        deadline = time.monotonic() + 3 * 2
        while time.monotonic() < deadline:
            state = machine.show("ActiveState", "NRestarts")
            assert state["ActiveState"] == "failed"
            assert int(state["NRestarts"]) == restarts
            time.sleep(0.5)
        assert "PUBLISH_INTERVAL_SEC" in machine.journal("-n", "20")
    finally:
        machine.set_env("PUBLISH_INTERVAL_SEC", None)
        machine.exec("systemctl", "reset-failed", UNIT, check=False)
        machine.exec("systemctl", "start", UNIT)
    assert active_running(machine)


def test_redis_down_at_start_the_unit_waits_then_runs(machine: Machine) -> None:
    machine.exec("systemctl", "stop", UNIT)
    machine.exec("systemctl", "stop", "redis-server")
    try:
        machine.exec("systemctl", "start", "--no-block", UNIT)
        # well past a few RestartSec periods: still starting, never failed, never restarted
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            state = machine.show("ActiveState", "NRestarts", "StatusText")
            assert state["ActiveState"] == "activating", state
            assert state["NRestarts"] == "0", state
            time.sleep(0.5)
        assert "waiting for Redis" in machine.prop("StatusText")
        machine.exec("systemctl", "start", "redis-server")
        wait_for("active (running) once Redis is back", lambda: active_running(machine), 60)
    finally:
        machine.exec("systemctl", "start", "redis-server")
        machine.exec("systemctl", "reset-failed", UNIT, check=False)
        machine.exec("systemctl", "restart", UNIT, check=False)


def test_redis_restarts_use_up_no_start_limit(machine: Machine) -> None:
    """More Redis restarts than StartLimitBurst (5): the service rides each one out (no
    exit, no restart of the unit), so the start limit is never touched."""
    assert active_running(machine)
    before = machine.show("NRestarts", "ExecMainPID")
    try:
        for _ in range(6):
            # Redis's own unit has start limits too (5 starts in 10 s by default): clear
            # its count, as the restarts under test are ours, not Debian's unit's
            machine.exec("systemctl", "reset-failed", "redis-server", check=False)
            machine.exec("systemctl", "restart", "redis-server")
            time.sleep(0.5)
    finally:
        machine.exec("systemctl", "reset-failed", "redis-server", check=False)
        machine.exec("systemctl", "start", "redis-server", check=False)
    machine.redis("del", LIVENESS)  # the next refresh shows it reconnected
    wait_for("the liveness key again", lambda: machine.redis("exists", LIVENESS) == "1", 30)
    after = machine.show("ActiveState", "SubState", "NRestarts", "ExecMainPID")
    assert after["ActiveState"] == "active" and after["SubState"] == "running", after
    assert after["NRestarts"] == before["NRestarts"], (before, after)
    assert after["ExecMainPID"] == before["ExecMainPID"], (before, after)


def test_journal_priorities_from_text_logs(machine: Machine) -> None:
    """With the default text logs, a WARNING is a warning for journald (`-p warning`): the
    service writes `<4>` before it (stderr is the journal: JOURNAL_STREAM)."""
    since = machine.exec("date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
    try:
        write_bad_position(machine, "BADTEXT")
        wait_for(
            "the BADTEXT warning in the journal",
            lambda: "BADTEXT" in machine.journal("--since", since, "-o", "cat"),
            timeout=20,
        )
        assert "BADTEXT" in machine.journal("--since", since, "-p", "warning", "-o", "cat")
    finally:
        machine.redis("del", position_key("BADTEXT"))
