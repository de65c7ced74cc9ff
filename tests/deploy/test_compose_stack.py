"""The compose stack, up for real: build, `up -d`, healthy Redis and harvest, the
simulator's inputs turned into proposals and audit entries, a Redis restart, a kill -9 of
harvest, Prometheus scraping it and sending its alerts to Alertmanager (which routes them
to the `null` receiver), Grafana with the dashboard provisioned (when its image is there:
it has no local stand-in), and `down -v` leaving nothing behind.

The steps share one stack (a module fixture) and run in file order, each one a test named
after what it proves. Every name carries this run's pid (project, image tag, Prometheus
port), so two runs on one machine do not meet. Timings are printed (`-s` or `-rA` shows
them; BENCHMARKS.md records them).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .containers import ROOT, Container, can_use, compose_command, official_images, sh, wait_for

pytestmark = [pytest.mark.deploy, pytest.mark.slow]

STREAM = "quantum:stream:harvest.proposal"
PROPOSALS = "quantum:harvest:proposal:"
LIVENESS = "quantum:harvest:publisher:compose"  # INSTANCE=compose
FLOOR_S, R_EPS, CHANGE_EPS = 10, 0.05, 0.001  # PUBLISH_INTERVAL_SEC, R_EPS, CHANGE_EPS_PCT
ALERTS = ("HarvestPublisherDown", "HarvestNoPublish", "HarvestRestartLoop")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Stack:
    command: list[str]
    project: str
    env: dict[str, str]
    password: str
    ports: dict[str, int]  # the monitoring UIs on this host: prometheus, alertmanager, grafana
    timings: dict[str, float] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 300) -> str:
        cmd = [*self.command, "-p", self.project, "--profile", "sim", "--profile", "monitoring"]
        done = sh(*cmd, *args, timeout=timeout, env=self.env)
        return done.stdout

    def container(self, service: str) -> Container:
        ids = self.compose("ps", "-q", service).split()
        assert len(ids) == 1, (service, ids)
        return Container(ids[0])

    def redis(self, *args: str) -> list[str]:
        """redis-cli inside the redis container, authenticated through the environment of
        that one exec (the password is in no command line)."""
        done = sh(
            "docker", "exec", "-i", "-e", f"REDISCLI_AUTH={self.password}",
            self.container("redis").id, "redis-cli", "--no-auth-warning", *args,
        )  # fmt: skip
        return done.stdout.splitlines()

    def audit(self, after: str = "-") -> list[tuple[str, dict[str, str]]]:
        """Audit stream entries (id, fields) after the given id."""
        start = "-" if after == "-" else f"({after}"
        raw = sh(
            "docker", "exec", "-e", f"REDISCLI_AUTH={self.password}",
            self.container("redis").id, "redis-cli", "--no-auth-warning", "--json",
            "xrange", STREAM, start, "+",
        ).stdout  # fmt: skip
        return [
            (entry_id, dict(zip(kv[::2], kv[1::2], strict=True)))
            for entry_id, kv in json.loads(raw)
        ]

    def proposals(self) -> dict[str, dict[str, str]]:
        out = {}
        for key in self.redis("--scan", "--pattern", f"{PROPOSALS}*"):
            raw = self.redis("--json", "hgetall", key)
            fields = as_hash(json.loads("".join(raw)))
            if fields:  # not retracted between SCAN and HGETALL
                out[key.removeprefix(PROPOSALS)] = fields
        return out

    def http(self, service: str, path: str, body: object = None, auth: str = "") -> Any:
        """JSON from a monitoring service's HTTP API on this host (POST when `body`)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.ports[service]}{path}")
        if body is not None:
            request.data = json.dumps(body).encode()
            request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        with urllib.request.urlopen(request, timeout=5) as resp:
            text = resp.read()
            return json.loads(text) if text else None

    def prometheus(self, path: str) -> dict[str, object]:
        body: dict[str, object] = self.http("prometheus", path)
        return body


def materially_different(old: dict[str, str], new: dict[str, str]) -> bool:
    """The publish rules' material change (INTERFACE §3), at the compose stack's defaults."""
    if old["harvest_action"] != new["harvest_action"]:
        return True
    if abs(float(old["R_net"]) - float(new["R_net"])) > R_EPS:
        return True
    if abs(float(old["kill_score"]) - float(new["kill_score"])) > CHANGE_EPS:
        return True
    old_sl, new_sl = old["new_sl_proposed"], new["new_sl_proposed"]
    if (old_sl == "None") != (new_sl == "None"):
        return True
    return bool(old_sl != "None" and abs(float(new_sl) / float(old_sl) - 1) > CHANGE_EPS)


def as_hash(reply: object) -> dict[str, str]:
    """redis-cli --json prints a hash as [k, v, ...] over RESP2, as {k: v} over RESP3."""
    if isinstance(reply, dict):
        return reply
    assert isinstance(reply, list)
    return dict(zip(reply[::2], reply[1::2], strict=True))


def healthy(container: Container) -> bool:
    health = container.state().get("Health")
    return isinstance(health, dict) and health.get("Status") == "healthy"


def stream_ms(entry_id: str) -> int:
    return int(entry_id.split("-", maxsplit=1)[0])


def redis_now_ms(stack: Stack) -> int:
    seconds, micros = stack.redis("time")
    return int(seconds) * 1000 + int(micros) // 1000


@pytest.fixture(scope="module")
def stack(images: dict[str, str], wheelhouse: Path, unique: str) -> Iterator[Stack]:
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    secret = ROOT / "secrets" / "redis-password"
    made_secret = not secret.exists()
    if made_secret:
        secret.parent.mkdir(mode=0o700, exist_ok=True)
        secret.write_text(os.urandom(18).hex() + "\n")
        secret.chmod(0o644)  # bind-mounted as is: redis and uid 10001 must read it
    ports = {name: free_port() for name in ("prometheus", "alertmanager", "grafana")}
    env = {
        **os.environ,
        **images,
        "HARVEST_IMAGE": f"harvest-async:deploy-test-{unique}",
        **{f"{name.upper()}_PORT": str(port) for name, port in ports.items()},
    }
    env.pop("COMPOSE_PROJECT_NAME", None)
    stack = Stack(
        command=command,
        project=f"harvest-deploy-{unique}",
        env=env,
        password=secret.read_text().strip(),
        ports=ports,
    )
    try:
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "5")
        sh("docker", "image", "rm", env["HARVEST_IMAGE"], check=False)
        if made_secret:
            secret.unlink()
        if stack.timings:
            print("compose stack timings:", json.dumps(stack.timings))


def test_images_build_from_the_wheelhouse(stack: Stack) -> None:
    started = time.monotonic()
    stack.compose("build", "harvest", timeout=900)
    stack.timings["build_s"] = round(time.monotonic() - started, 1)
    image = stack.env["HARVEST_IMAGE"]
    size = int(sh("docker", "image", "inspect", "--format", "{{.Size}}", image).stdout)
    stack.timings["image_mb"] = round(size / 1e6, 1)
    config = json.loads(
        sh("docker", "image", "inspect", "--format", "{{json .Config}}", image).stdout
    )
    assert config["User"] == "10001:10001"
    assert "doctor" in config["Healthcheck"]["Test"]
    version = sh("docker", "run", "--rm", image, "--version").stdout
    assert version.startswith("harvest-async ")


def test_up_redis_and_harvest_become_healthy(stack: Stack) -> None:
    started = time.monotonic()
    stack.compose("up", "-d", "redis", "harvest")
    redis, harvest = stack.container("redis"), stack.container("harvest")
    wait_for("redis healthy", lambda: healthy(redis), timeout=60)
    wait_for("harvest healthy", lambda: healthy(harvest), timeout=90)
    stack.timings["up_to_healthy_s"] = round(time.monotonic() - started, 1)

    # harvest: the uid of the image, a read-only root, no capabilities, doctor as healthcheck
    info = harvest.inspect()
    host, config = info["HostConfig"], info["Config"]
    assert isinstance(host, dict) and isinstance(config, dict)
    assert config["User"] == "10001:10001"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "doctor" in config["Healthcheck"]["Test"]
    assert harvest.exec("id", "-u").stdout.strip() == "10001"
    denied = harvest.exec("touch", "/opt/harvest-async/x", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    doctor = harvest.exec("harvest-async", "doctor", "--json", check=False)
    assert json.loads(doctor.stdout)["ok"] is True, doctor.stdout


def test_redis_has_notify_flags_from_its_command_line_and_the_secret_password(stack: Stack) -> None:
    redis = stack.container("redis")
    name, flags = stack.redis("config", "get", "notify-keyspace-events")
    assert name == "notify-keyspace-events" and set(flags) >= set("AKE")
    # on the container's command line (a restart keeps it); the password is neither there
    # nor in the environment (redis-server rewrites its process title, so /proc shows less)
    config = redis.inspect()["Config"]
    assert isinstance(config, dict)
    command = " ".join(config["Cmd"])
    assert "--notify-keyspace-events KEA" in command
    assert "/run/secrets/redis_password" in command
    assert not any(stack.password in item for item in [*config["Cmd"], *config["Env"]])
    assert stack.password not in redis.exec("cat", "/proc/1/cmdline").stdout
    # without the password: refused
    refused = redis.exec("redis-cli", "ping").stdout
    assert "NOAUTH" in refused


def test_simulator_inputs_become_proposals_and_audit_entries(stack: Stack) -> None:
    stack.compose("up", "-d", "simulator")

    def three_or_more() -> dict[str, dict[str, str]] | None:
        found = stack.proposals()
        return found if len(found) >= 3 else None

    proposals = wait_for("3 proposals", three_or_more, timeout=60)
    assert isinstance(proposals, dict)
    for symbol, fields in proposals.items():
        assert fields["symbol"] == symbol
        assert fields["harvest_action"] in (
            "NONE",
            "PARTIAL_25",
            "PARTIAL_50",
            "PARTIAL_75",
            "FULL_CLOSE_PROPOSED",
        )
        assert re.fullmatch(r"[0-9a-f]{16}", fields["plan_id"])
    entries = stack.audit()
    assert any(f["event"] == "publish" and f["symbol"] in proposals for _id, f in entries)


def test_redis_restart_harvest_converges_without_restarting(stack: Stack) -> None:
    harvest = stack.container("harvest")
    before = harvest.state()
    restarted_at = redis_now_ms(stack)
    stack.compose("restart", "redis")
    wait_for("redis healthy again", lambda: healthy(stack.container("redis")), timeout=60)

    def published_again() -> bool:  # a change made after the restart reached a proposal
        return any(
            f["event"] == "publish" and f["trigger"] == "change"
            for _i, f in stack.audit(f"{restarted_at}-0")
        )

    wait_for("a publish after the Redis restart", published_again, timeout=60)
    beat = as_hash(json.loads("".join(stack.redis("--json", "hgetall", LIVENESS))))
    assert float(beat["last_beat_epoch"]) * 1000 > restarted_at
    doctor = harvest.exec("harvest-async", "doctor", "--json", check=False)
    assert json.loads(doctor.stdout)["ok"] is True, doctor.stdout
    after = harvest.state()
    assert (after["StartedAt"], after["Pid"]) == (before["StartedAt"], before["Pid"])
    assert harvest.inspect()["RestartCount"] == 0
    assert "resync (resubscribed)" in harvest.logs()


def test_kill_9_harvest_is_restarted_and_adopts_instead_of_republishing(stack: Stack) -> None:
    stack.compose("stop", "simulator")  # no input changes from here on: decisions hold still

    def floor_window_passed() -> bool:  # every deferred (trailing-edge) publish is out
        last = stack.redis("xrevrange", STREAM, "+", "-", "count", "1")
        return redis_now_ms(stack) - stream_ms(last[0]) > (FLOOR_S + 1) * 1000

    wait_for("the stream to settle after the simulator stopped", floor_window_passed, 40)
    harvest = stack.container("harvest")
    first_pid = harvest.state()["Pid"]
    # SIGKILL from outside, as the OOM killer would. Not `docker kill -s KILL`: Docker
    # counts that as a manual stop, and no restart policy restarts a manually stopped
    # container (seen with Docker 20.10: RestartCount stayed 0).
    assert isinstance(first_pid, int) and first_pid > 0
    os.kill(first_pid, signal.SIGKILL)
    wait_for(
        "a restart by the restart policy",
        lambda: harvest.inspect()["RestartCount"] == 1,
        timeout=60,
    )
    wait_for("harvest healthy after the restart", lambda: healthy(harvest), timeout=90)
    assert harvest.state()["Pid"] != first_pid
    started_ms = harvest.started_ms()

    logs = harvest.logs(since=str(harvest.state()["StartedAt"]))
    ready = re.search(r"ready: \d+ symbols, \d+ writes at startup, (\d+) proposals adopted", logs)
    assert ready is not None, logs[-3000:]
    # the audit stream split at the restart: the last publish of each symbol before it, and
    # what the new process wrote
    last_before: dict[str, dict[str, str]] = {}
    written_after: dict[str, list[dict[str, str]]] = {}
    for entry_id, f in stack.audit():
        if f.get("event") != "publish":
            continue
        if stream_ms(entry_id) < started_ms:
            last_before[f["symbol"]] = {
                **f,
                "_age_at_restart_ms": str(started_ms - stream_ms(entry_id)),
            }
        else:
            written_after.setdefault(f["symbol"], []).append(f)
    # a startup publish only where the decision changed materially (no re-publish storm)
    republished = [
        symbol
        for symbol, entries in written_after.items()
        for f in entries
        if f["trigger"] == "startup"
        and symbol in last_before
        and not materially_different(last_before[symbol], f)
    ]
    assert republished == [], (
        f"re-published unchanged decisions: {republished}",
        {symbol: (last_before[symbol], written_after[symbol]) for symbol in republished},
    )
    # an adopted proposal is the hash that was there: same seq, unless a heartbeat or a
    # change has legitimately re-published it since
    after = stack.proposals()
    adopted = [s for s in after if s in last_before and s not in written_after]
    assert adopted and int(ready.group(1)) >= len(adopted), (adopted, logs[-3000:])
    for symbol in adopted:
        assert after[symbol]["seq"] == last_before[symbol]["seq"], symbol
    startup = [
        f for entries in written_after.values() for f in entries if f["trigger"] == "startup"
    ]
    print(
        f"after kill -9: {len(adopted)} adopted, "
        f"{len(startup)} startup publishes (changed decisions)"
    )


def test_prometheus_scrapes_harvest_and_loads_the_alert_rules(stack: Stack) -> None:
    stack.compose("up", "-d", "prometheus")

    def harvest_up() -> bool:
        try:
            body = stack.prometheus("/api/v1/query?query=up%7Bjob%3D%22harvest-async%22%7D")
        except OSError:
            return False
        result = body["data"]["result"]  # type: ignore[index]
        return bool(result) and result[0]["value"][1] == "1"

    wait_for("Prometheus: up{job=harvest-async} == 1", harvest_up, timeout=90, every=1)

    def rule_health() -> dict[str, str]:
        rules = stack.prometheus("/api/v1/rules")["data"]["groups"]  # type: ignore[index]
        return {rule["name"]: rule["health"] for group in rules for rule in group["rules"]}

    # "unknown" until the first evaluation (every 30 s), which may come after the first scrape
    def evaluated() -> bool:
        return all(rule_health().get(alert) != "unknown" for alert in ALERTS)

    wait_for("the alert rules evaluated once", evaluated, timeout=90, every=1)
    loaded = rule_health()
    for alert in ALERTS:
        assert loaded.get(alert) == "ok", loaded
    # Prometheus is on the compose network, not in harvest's namespace (that broke on recreate)
    prometheus = stack.container("prometheus").inspect()["HostConfig"]
    assert isinstance(prometheus, dict)
    assert not str(prometheus["NetworkMode"]).startswith("container:")

    def alertmanager_active() -> bool:  # discovered from prometheus.yml's alerting section
        managers = stack.prometheus("/api/v1/alertmanagers")["data"]["activeAlertmanagers"]  # type: ignore[index]
        return any(":9093/" in m["url"] for m in managers)

    wait_for("Prometheus: an active Alertmanager", alertmanager_active, timeout=60, every=1)


def test_alertmanager_takes_alerts_and_routes_them_to_the_null_receiver(stack: Stack) -> None:
    def ready() -> bool:
        try:
            stack.http("alertmanager", "/api/v2/status")
        except OSError:
            return False
        return True

    wait_for("Alertmanager ready", ready, timeout=60, every=1)
    status = stack.http("alertmanager", "/api/v2/status")
    assert 'receiver: "null"' in status["config"]["original"]
    # an alert as Prometheus posts one: accepted, grouped, and sent nowhere
    alert = {
        "labels": {"alertname": "HarvestPublisherDown", "severity": "critical", "job": "test"},
        "annotations": {"summary": "deploy test"},
    }
    stack.http("alertmanager", "/api/v2/alerts", body=[alert])

    def grouped() -> list[Any]:
        groups = stack.http("alertmanager", "/api/v2/alerts/groups")
        return [g for g in groups if any(a["labels"].get("job") == "test" for a in g["alerts"])]

    groups = wait_for("the test alert in a group", grouped, timeout=30)
    assert isinstance(groups, list) and len(groups) == 1, groups
    assert groups[0]["receiver"]["name"] == "null"


def test_grafana_shows_the_provisioned_dashboard(stack: Stack) -> None:
    image = stack.env.get("GRAFANA_IMAGE") or official_images()["GRAFANA_IMAGE"]
    if not can_use(image):
        pytest.skip(f"{image} is not here and cannot be pulled (Grafana has no local stand-in)")
    stack.compose("up", "-d", "grafana")

    def healthy_api() -> bool:
        try:
            return bool(stack.http("grafana", "/api/health").get("database") == "ok")
        except OSError:
            return False

    wait_for("Grafana /api/health", healthy_api, timeout=120, every=1)
    expected = json.loads((ROOT / "deploy" / "grafana" / "harvest.json").read_text())
    found = stack.http("grafana", "/api/search?type=dash-db")  # anonymous viewer
    assert [d["uid"] for d in found] == [expected["uid"]], found
    dashboard = stack.http("grafana", f"/api/dashboards/uid/{expected['uid']}")["dashboard"]
    assert [p["title"] for p in dashboard["panels"]] == [p["title"] for p in expected["panels"]]
    health = stack.http("grafana", "/api/datasources/uid/prometheus/health", auth="admin:admin")
    assert health["status"] == "OK", health


def test_down_v_leaves_nothing_behind(stack: Stack) -> None:
    stack.compose("down", "-v", "--remove-orphans", "--timeout", "10")
    label = f"label=com.docker.compose.project={stack.project}"
    assert sh("docker", "ps", "-aq", "--filter", label).stdout.split() == []
    assert sh("docker", "network", "ls", "-q", "--filter", label).stdout.split() == []
    assert sh("docker", "volume", "ls", "-q", "--filter", label).stdout.split() == []
