"""`harvest-async config`: every setting with its effective value and where it came from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def config(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    return subprocess.run(
        [sys.executable, "-m", "harvest_async", "config", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def rows(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    return {row["variable"]: row for row in data["settings"]} | {"_unused": data["unused"]}


def test_each_setting_names_its_source(tmp_path: Path) -> None:
    env_file = tmp_path / "harvest.env"
    env_file.write_text(
        "REDIS_HOST=10.9.9.9\nREDIS_PORT=6390\nREDIS_DB=2\nPUBLISH_INTERVAL_SEC=5\n"
        "THETA_KILL_THRESHOLD=0.7\nNOT_A_SETTING=1\nLOG_LEVEL=WARNING\n"
    )
    theta = tmp_path / "theta.toml"
    theta.write_text("T1_R = 2.5\n")
    got = rows(
        config(
            "--env-file", str(env_file), "--theta-file", str(theta), "--max-publish-age", "30",
            "--json",
            env={"LOG_LEVEL": "DEBUG", "R_EPS": "0.1"},
        )
    )  # fmt: skip
    assert got["REDIS_URL"]["value"] == "redis://10.9.9.9:6390/2"
    assert got["REDIS_URL"]["source"] == f"REDIS_HOST, REDIS_PORT, REDIS_DB (env file {env_file})"
    assert got["PUBLISH_INTERVAL_SEC"] == {
        "variable": "PUBLISH_INTERVAL_SEC", "value": "5", "source": f"env file {env_file}"
    }  # fmt: skip
    assert got["MAX_PUBLISH_AGE_SEC"]["source"] == "flag --max-publish-age"
    assert (got["R_EPS"]["value"], got["R_EPS"]["source"]) == ("0.1", "environment")
    # the environment wins over the env file, as for `run`
    assert (got["LOG_LEVEL"]["value"], got["LOG_LEVEL"]["source"]) == ("DEBUG", "environment")
    assert got["CHANGE_EPS_PCT"]["source"] == "default"
    assert got["THETA_T1_R"]["value"] == "2.5"
    assert got["THETA_T1_R"]["source"] == f"THETA_FILE {theta} (flag --theta)"
    assert got["THETA_KILL_THRESHOLD"]["source"] == f"env file {env_file}"
    assert got["THETA_T2_R"]["source"] == "default"
    assert got["_unused"] == ["NOT_A_SETTING"]


def test_secrets_are_masked(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("file-secret\n")
    done = config("--redis-url", "redis://user:url-secret@h:6379/0")
    assert done.returncode == 0, done.stderr
    assert "url-secret" not in done.stdout
    assert "redis://***@h:6379/0" in done.stdout
    got = rows(config("--json", env={"REDIS_PASSWORD_FILE": str(secret)}))
    assert got["REDIS_PASSWORD"]["value"] == "***"
    assert got["REDIS_PASSWORD"]["source"] == f"REDIS_PASSWORD_FILE {secret} (environment)"
    plain = config("--json", env={"REDIS_PASSWORD": "env-secret"})
    assert "env-secret" not in plain.stdout
    assert rows(plain)["REDIS_PASSWORD"]["source"] == "environment"


def test_text_output_is_a_table() -> None:
    done = config(env={"SYMBOLS": "BTCUSDT,ETHUSDT"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["VARIABLE", "VALUE", "SOURCE"]
    assert any(line.split() == ["SYMBOLS", "BTCUSDT,ETHUSDT", "environment"] for line in lines)
    assert any(line.startswith("theta_id ") for line in lines)


def test_invalid_settings_exit_2_naming_the_variable() -> None:
    done = config(env={"REDIS_URL": "redis://a:6379/0", "REDIS_DB": "3"})
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "REDIS_URL" in line and "REDIS_DB" in line
