"""One command line: `--symbols` is a comma list wherever it exists (a count is
`--symbol-count`), `--theta` (alias `--theta-file`) wherever tunables matter, and no
command takes a flag that does nothing (log flags only where something is logged)."""

from __future__ import annotations

import pytest

from harvest_async.cli.main import build_parser

FILE = {"replay": ["x.jsonl"], "plot": ["t.jsonl"], "explain": ["BTCUSDT"], "record": ["-o", "x"]}
WITH_SYMBOLS = ["run", "record", "replay", "plot", "doctor", "watch", "explain", "config",
                "simulate", "demo"]  # fmt: skip
WITH_THETA = ["run", "replay", "compute", "plot", "explain", "config"]
LOGGING = ["run", "record", "replay", "config"]
SILENT = ["doctor", "watch", "simulate", "explain", "compute", "plot", "demo"]


def parse(*argv: str) -> object:
    command = argv[0]
    return build_parser().parse_args([command, *FILE.get(command, []), *argv[1:]])


@pytest.mark.parametrize("command", WITH_SYMBOLS)
def test_symbols_is_a_comma_list_everywhere(command: str) -> None:
    args = parse(command, "--symbols", "BTCUSDT, ETHUSDT")
    assert args.symbols == "BTCUSDT,ETHUSDT"  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", WITH_SYMBOLS)
def test_an_empty_symbol_list_is_refused(command: str) -> None:
    with pytest.raises(SystemExit) as raised:
        parse(command, "--symbols", " , ")
    assert raised.value.code == 2


@pytest.mark.parametrize("command", ["simulate", "demo"])
def test_a_count_is_symbol_count(command: str) -> None:
    assert parse(command, "--symbol-count", "7").symbol_count == 7  # type: ignore[attr-defined]
    with pytest.raises(SystemExit):
        parse(command, "--symbol-count", "3", "--symbols", "BTCUSDT")  # one or the other


def test_simulate_keeps_symbol_list_as_an_alias() -> None:
    assert parse("simulate", "--symbol-list", "A,B").symbols == "A,B"  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", WITH_THETA)
@pytest.mark.parametrize("flag", ["--theta", "--theta-file"])
def test_theta_everywhere_with_theta_file_as_alias(command: str, flag: str) -> None:
    assert parse(command, flag, "t.toml").theta == "t.toml"  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", LOGGING)
def test_log_flags_where_the_command_logs(command: str) -> None:
    args = parse(command, "--log-format", "json", "--log-level", "DEBUG")
    assert args.log_format == "json"  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", SILENT)
@pytest.mark.parametrize("flag", ["--log-format", "--log-level"])
def test_no_log_flags_where_nothing_is_logged(command: str, flag: str) -> None:
    with pytest.raises(SystemExit) as raised:
        parse(command, flag, "json")
    assert raised.value.code == 2
