"""`harvest-async compute`: the what-if command (README.md, docs/kernel.md); `run_compute`.

`run_compute` without `checks` is the raw kernel (`compute --raw`); the command's default
applies the service's validation first (see tests/unit/test_compute_agreement.py)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from harvest_async.cli.main import build_parser, main
from harvest_async.config import ConfigError, load_theta, settings_from_env
from harvest_async.core.models import Theta
from harvest_async.tools import compute as whatif

DATA = Path(__file__).resolve().parents[1] / "data" / "kernel_vectors_public.json"
VECTORS: list[dict[str, Any]] = json.loads(DATA.read_bytes())
OUTPUT_KEYS = [
    "harvest_action",
    "new_sl_proposed",
    "R_net",
    "risk_unit",
    "cost_est",
    "kill_score",
    "reason_codes",
    "k_components",
    "tranche_weights",
]


def case_input(case: dict[str, Any]) -> dict[str, Any]:
    return {k: case[k] for k in ("name", "position", "market_state", "p1_proposal", "theta")}


def jsonl(cases: list[dict[str, Any]]) -> bytes:
    return b"".join(msgspec.json.encode(c) + b"\n" for c in cases)


def run(data: bytes | str, theta: Theta | None = None) -> tuple[int, list[dict[str, Any]]]:
    out = io.BytesIO()
    stream = io.BytesIO(data) if isinstance(data, bytes) else io.StringIO(data)
    status = whatif.run_compute(stream, out, theta)
    return status, [json.loads(line) for line in out.getvalue().splitlines()]


def expected_line(case: dict[str, Any], index: int) -> bytes:
    """The exact bytes a computed case must produce: index, name, symbol, then the
    expected block."""
    head = {"index": index, "name": case["name"], "symbol": case["position"]["symbol"]}
    return msgspec.json.encode({**head, **case["expected"]})


def expected_lines(cases: list[dict[str, Any]]) -> list[bytes]:
    return [expected_line(c, i) for i, c in enumerate(cases)]


def assert_exact(got: dict[str, Any], case: dict[str, Any]) -> None:
    assert isinstance(got.pop("index"), int)
    assert got.pop("name") == case["name"]
    assert got.pop("symbol") == case["position"]["symbol"]
    assert list(got) == OUTPUT_KEYS
    assert got == case["expected"]
    # JSON equality treats 2 and 2.0 alike; the float type must be preserved too
    for key in ("R_net", "risk_unit", "cost_est", "kill_score"):
        assert type(got[key]) is float


def bad_position_case(**changes: Any) -> dict[str, Any]:
    case = case_input(VECTORS[5])
    case["position"] = {**case["position"], **changes}
    return case


# --- through main() ------------------------------------------------------------------


def test_main_compute_raw_reproduces_every_vector_byte_for_byte(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["compute", "--raw", str(DATA)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.encode().splitlines()
    assert len(lines) == len(VECTORS)
    for index, (line, case) in enumerate(zip(lines, VECTORS, strict=True)):
        assert line == expected_line(case, index), case["name"]
        assert_exact(json.loads(line), case)


def test_main_compute_jsonl_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cases.jsonl"
    path.write_bytes(jsonl([case_input(c) for c in VECTORS]))
    assert main(["compute", "--raw", str(path)]) == 0
    lines = capsys.readouterr().out.encode().splitlines()
    assert lines == expected_lines(VECTORS)


def test_main_compute_reports_rejected_cases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [case_input(c) for c in VECTORS[:5]]
    cases[2] = bad_position_case(entry_price="oops")
    path = tmp_path / "cases.json"
    path.write_bytes(msgspec.json.encode(cases))
    assert main(["compute", str(path)]) == 1
    captured = capsys.readouterr()
    out = [json.loads(line) for line in captured.out.splitlines()]
    assert len(out) == 5
    assert out[2] == {
        "index": 2,
        "name": VECTORS[5]["name"],
        "symbol": "BTCUSDT",
        "error": "invalid_position: entry_price is not a number ('oops')",
    }
    for i in (0, 1, 3, 4):
        assert_exact(out[i], VECTORS[i])
    err_lines = captured.err.splitlines()
    assert len(err_lines) == 1
    assert err_lines[0].startswith("harvest-async: compute:")


def test_main_compute_missing_file_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compute", "/nonexistent/cases.json"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert "/nonexistent/cases.json" in err[0]


def test_main_compute_with_theta_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    theta_file = tmp_path / "theta.toml"
    theta_file.write_text("kill_threshold = 0.5\nT1_R = 1\n")
    case = case_input(VECTORS[0])  # R_net 0.45, K 0.503, theta sets T1_R 2.0 itself
    case["theta"] = {"T1_R": 0.4}
    plain = case_input(VECTORS[0])
    del plain["theta"]
    path = tmp_path / "cases.jsonl"
    path.write_bytes(jsonl([case, plain]))
    assert main(["compute", str(path), "--theta", str(theta_file)]) == 0
    first, second = (json.loads(x) for x in capsys.readouterr().out.splitlines())
    # the file's kill_threshold applies to both; the case's own T1_R wins over the file's
    assert first["harvest_action"] == second["harvest_action"] == "FULL_CLOSE_PROPOSED"
    assert first["reason_codes"] == ["harvest_partial_25", "kill_score_triggered"]
    assert second["reason_codes"] == ["kill_score_triggered"]


def test_main_compute_with_theta_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    theta_file = tmp_path / "theta.json"
    theta_file.write_text('{"u1": 1.0}')
    path = tmp_path / "cases.jsonl"
    plain = case_input(VECTORS[0])
    del plain["theta"]
    path.write_bytes(jsonl([plain]))
    assert main(["compute", str(path), "--theta", str(theta_file)]) == 0
    (out,) = (json.loads(x) for x in capsys.readouterr().out.splitlines())
    w = out["tranche_weights"]
    assert w[0] > w[1] == w[2]


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("theta.toml", "T4_R = 1.0\n", "unknown field `T4_R`"),
        ("theta.toml", "sigma_ref = 0.0\n", "theta.sigma_ref: must be > 0"),
        ("theta.toml", "T1_R = 'x'\n", "`$.T1_R`"),
        ("theta.json", "{not json", "malformed"),
    ],
)
def test_main_compute_bad_theta_file_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, needle: str
) -> None:
    theta_file = tmp_path / name
    theta_file.write_text(text)
    assert main(["compute", str(DATA), "--theta", str(theta_file)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.splitlines()
    assert len(err) == 1
    assert needle in err[0]
    assert str(theta_file) in err[0]


def test_load_theta_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"--theta: cannot read '/nonexistent/theta\.toml'"):
        load_theta("/nonexistent/theta.toml", variable="--theta")


def test_compute_and_replay_accept_the_same_theta_files(tmp_path: Path) -> None:
    """One loader: a `[theta]` table works for `compute --theta` as for THETA_FILE."""
    theta_file = tmp_path / "theta.toml"
    theta_file.write_text("[theta]\nT1_R = 1.5\n")
    assert load_theta(str(theta_file), variable="--theta").T1_R == 1.5
    env = settings_from_env({"THETA_FILE": str(theta_file)})
    assert env.theta.T1_R == 1.5


# --- through the console entry point (subprocess) ------------------------------------------


def _cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "harvest_async", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("fmt", ["array", "jsonl"])
def test_subprocess_stdin_reproduces_every_vector(fmt: str) -> None:
    cases = [case_input(c) for c in VECTORS]
    data = msgspec.json.encode(cases) if fmt == "array" else jsonl(cases)
    proc = _cli("compute", "--raw", "-", stdin=data)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    assert proc.stdout.splitlines() == expected_lines(VECTORS)


def test_subprocess_stdin_default_is_stdin() -> None:
    proc = _cli("compute", stdin=jsonl([case_input(VECTORS[0])]))
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == [expected_line(VECTORS[0], 0)]


def test_subprocess_malformed_case_in_the_middle() -> None:
    cases = [case_input(c) for c in VECTORS[:3]]
    data = jsonl(cases[:1]) + b'{"name": "broken", "position": {\n' + jsonl(cases[1:])
    proc = _cli("compute", "-", stdin=data)
    assert proc.returncode == 1
    out = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(out) == 4
    assert out[1]["index"] == 1
    assert out[1]["line"] == 2
    assert out[1]["error"] == "Input data was truncated"  # msgspec's words for it
    for got, case in zip([out[0], out[2], out[3]], VECTORS[:3], strict=True):
        assert_exact(got, case)
    err = proc.stderr.decode().splitlines()
    assert len(err) == 1
    assert err[0].startswith("harvest-async: ")


def test_subprocess_version() -> None:
    proc = _cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.decode().startswith("harvest-async ")


def test_subprocess_no_command_is_exit_2() -> None:
    proc = _cli()
    assert proc.returncode == 2
    assert b"command is required" in proc.stderr


def test_subprocess_bad_argument_is_exit_2() -> None:
    proc = _cli("compute", "--no-such-flag")
    assert proc.returncode == 2


def test_compute_does_not_import_redis_or_anyio() -> None:
    script = (
        "import sys, io\n"
        "from harvest_async.cli.main import main\n"
        "sys.stdin = io.TextIOWrapper(io.BytesIO(b''))\n"
        "assert main(['compute']) == 0\n"
        "bad = [m for m in ('redis', 'anyio', 'hiredis', 'uvloop', 'prometheus_client')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr


# --- run_compute directly -------------------------------------------------------------------


def test_all_good_is_status_0() -> None:
    status, out = run(jsonl([case_input(c) for c in VECTORS[:10]]))
    assert status == 0
    assert len(out) == 10


@pytest.mark.parametrize("data", [b"", b"   \n\n\t ", "", "\n"])
def test_empty_input_is_status_0_without_output(data: bytes | str) -> None:
    assert run(data) == (0, [])


def test_text_streams_work() -> None:
    src = jsonl([case_input(VECTORS[0])]).decode()
    out = io.StringIO()
    assert whatif.run_compute(io.StringIO(src), out) == 0
    assert out.getvalue().encode() == expected_line(VECTORS[0], 0) + b"\n"


def test_name_is_optional() -> None:
    case = case_input(VECTORS[0])
    del case["name"]
    _, (out,) = run(jsonl([case]))
    assert list(out) == ["index", "symbol", *OUTPUT_KEYS]
    assert out == {"index": 0, "symbol": "BTCUSDT", **VECTORS[0]["expected"]}


def test_p1_proposal_and_theta_may_be_absent_or_null() -> None:
    base = case_input(VECTORS[0])
    absent = {k: v for k, v in base.items() if k not in ("p1_proposal", "theta")}
    nulls = {**base, "p1_proposal": None, "theta": None}
    empty = {**base, "p1_proposal": None, "theta": {}}
    status, outs = run(jsonl([absent, nulls, empty]))
    assert status == 0
    assert [out.pop("index") for out in outs] == [0, 1, 2]
    assert outs[0] == outs[1] == outs[2]


def test_ints_are_accepted_for_floats() -> None:
    case = case_input(VECTORS[0])
    case["position"] = {**case["position"], "entry_price": 100, "age_sec": 3600}
    status, (out,) = run(jsonl([case]))
    assert status == 0
    assert_exact(out, VECTORS[0])


def test_unknown_case_keys_are_ignored() -> None:
    case = {**VECTORS[0], "comment": "anything", "expected": {"not": "checked"}}
    status, (out,) = run(jsonl([case]))
    assert status == 0
    assert_exact(out, VECTORS[0])


def _one_error(case: dict[str, Any] | bytes) -> dict[str, Any]:
    data = case if isinstance(case, bytes) else msgspec.json.encode(case)
    good = jsonl([case_input(VECTORS[0])])
    status, out = run(good + data + b"\n" + good)
    assert status == 1
    assert len(out) == 3
    assert "error" not in out[0]
    assert "error" not in out[2]
    assert out[1]["index"] == 1
    assert out[1]["line"] == 2
    return out[1]


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"entry_price": "100"}, "Expected `float`, got `str` - at `$.position.entry_price`"),
        ({"entry_price": True}, "Expected `float`, got `bool` - at `$.position.entry_price`"),
        ({"side": "BUY"}, "position.side: must be LONG or SHORT, got 'BUY'"),
        ({"entry_price": -1.0}, "position.entry_price: must be >= 0, got -1.0"),
        ({"current_sl": "x"}, "Expected `float | null`, got `str` - at `$.position.current_sl`"),
    ],
)
def test_bad_position_field_is_named(changes: dict[str, Any], error: str) -> None:
    out = _one_error(bad_position_case(**changes))
    assert out["error"] == error
    assert out["name"] == VECTORS[5]["name"]


def test_missing_field_is_named() -> None:
    case = case_input(VECTORS[0])
    case["market_state"] = {k: v for k, v in case["market_state"].items() if k != "sigma"}
    out = _one_error(case)
    assert out["error"] == "Object missing required field `sigma` - at `$.market_state`"


def test_missing_section_is_named() -> None:
    case = case_input(VECTORS[0])
    del case["market_state"]
    assert "`market_state`" in _one_error(case)["error"]


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_tokens_are_malformed_json(token: bytes) -> None:
    text = msgspec.json.encode(case_input(VECTORS[0])).replace(
        b'"entry_price":100.0', b'"entry_price":' + token
    )
    assert token in text
    out = _one_error(text)
    assert out["error"].startswith("JSON is malformed")
    assert "name" not in out  # the line cannot be parsed, so neither can its name


def test_out_of_range_number_is_named() -> None:
    text = msgspec.json.encode(case_input(VECTORS[0])).replace(b'"sigma":0.01', b'"sigma":1e999')
    out = _one_error(text)
    assert out["error"] == "Number out of range - at `$.market_state.sigma`"
    assert out["name"] == VECTORS[0]["name"]


def test_overflowing_result_is_rejected_naming_the_output() -> None:
    case = bad_position_case(entry_price=0.0, unrealized_pnl=1e300)  # R_net = 1e300 / 1e-9
    out = _one_error(case)
    assert out["error"].startswith("R_net: ")
    assert "not finite (inf)" in out["error"]


@pytest.mark.parametrize(
    ("theta", "error"),
    [
        ({"T4_R": 1.0}, "Object contains unknown field `T4_R` - at `$.theta`"),
        ({"T1_R": "2"}, "Expected `float`, got `str` - at `$.theta.T1_R`"),
        ({"sigma_ref": 0}, "theta.sigma_ref: must be > 0, got 0.0"),
        ({"u1": 800.0}, "theta.u1: u1/softmax_temp = 800.0 overflows exp (max 709.78)"),
        ([1, 2], "Expected `object`, got `array` - at `$.theta`"),
    ],
)
def test_bad_case_theta_is_named(theta: Any, error: str) -> None:
    case = {**case_input(VECTORS[0]), "theta": theta}
    assert _one_error(case)["error"] == error


def test_same_bad_theta_twice_reports_twice() -> None:
    case = {**case_input(VECTORS[0]), "theta": {"sigma_ref": -1.0}}
    status, out = run(jsonl([case, case]))
    assert status == 1
    assert [o["error"] for o in out] == ["theta.sigma_ref: must be > 0, got -1.0"] * 2


def test_non_object_lines_are_rejected() -> None:
    assert _one_error(b"42")["error"] == "Expected `object`, got `int`"


def test_array_with_a_bad_case_runs_the_others() -> None:
    cases: list[Any] = [case_input(c) for c in VECTORS[:4]]
    cases[1] = bad_position_case(side="BUY")
    cases[3] = "not a case"
    status, out = run(msgspec.json.encode(cases))
    assert status == 1
    assert out[1] == {
        "index": 1,
        "name": VECTORS[5]["name"],
        "symbol": "BTCUSDT",
        "error": "position.side: must be LONG or SHORT, got 'BUY'",
    }
    assert out[3] == {"index": 3, "error": "Expected `object`, got `str`"}
    assert_exact(out[0], VECTORS[0])
    assert_exact(out[2], VECTORS[2])


def test_array_with_out_of_range_number_runs_the_others() -> None:
    text = msgspec.json.encode([case_input(c) for c in VECTORS[:2]])
    text = text.replace(b'"sigma":0.01', b'"sigma":1e999', 1)
    status, out = run(text)
    assert status == 1
    assert out[0]["error"] == "Number out of range - at `$.market_state.sigma`"
    assert_exact(out[1], VECTORS[1])


@pytest.mark.parametrize("data", [b"[", b'[{"position": 1},', b"[1, 2] [3]", b"  [}"])
def test_broken_array_is_one_error(data: bytes) -> None:
    status, out = run(data)
    assert status == 1
    assert len(out) == 1
    assert set(out[0]) == {"error"}
    assert out[0]["error"].startswith("input is not a valid JSON array: ")


def test_jsonl_details_blank_lines_crlf_bom_and_no_final_newline() -> None:
    a, b = (msgspec.json.encode(case_input(c)) for c in VECTORS[:2])
    data = b"\xef\xbb\xbf\r\n" + a + b"\r\n\r\n   \n" + b"not json\r\n" + b
    status, out = run(data)
    assert status == 1
    assert_exact(out[0], VECTORS[0])
    assert out[1]["index"] == 1
    assert out[1]["line"] == 5
    assert_exact(out[2], VECTORS[1])


def test_jsonl_across_tiny_read_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines split across reads are reassembled (the reader works in blocks)."""
    monkeypatch.setattr(whatif, "READ_BYTES", 7)
    cases = [case_input(c) for c in VECTORS[:30]]
    cases[11] = bad_position_case(side="long")
    status, out = run(jsonl(cases) + b"\n\n")
    assert status == 1
    assert len(out) == 30
    assert out[11]["index"] == 11
    assert out[11]["line"] == 12
    for i in (0, 10, 12, 29):
        assert_exact(out[i], VECTORS[i])


def test_array_across_tiny_read_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(whatif, "READ_BYTES", 3)
    status, out = run(b"\n  \n" + msgspec.json.encode([case_input(c) for c in VECTORS[:5]]))
    assert status == 0
    for got, case in zip(out, VECTORS[:5], strict=True):
        assert_exact(got, case)


def test_theta_default_must_be_valid_else_every_case_is_rejected() -> None:
    case = case_input(VECTORS[0])
    del case["theta"]
    status, out = run(jsonl([case]), theta=Theta(max_age_sec=0.0))
    assert status == 1
    assert out[0]["error"] == "theta.max_age_sec: must be > 0, got 0.0"


def test_many_distinct_thetas() -> None:
    cases = []
    for i in range(50):
        case = case_input(VECTORS[0])
        case["theta"] = {"kill_threshold": 0.5 + i / 100}
        cases.append(case)
    status, out = run(jsonl(cases))
    assert status == 0
    assert out[0]["harvest_action"] == "FULL_CLOSE_PROPOSED"  # K 0.503 >= 0.5
    assert out[49]["harvest_action"] == "NONE"


# --- the parser -----------------------------------------------------------------------------


def test_compute_is_registered() -> None:
    args = build_parser().parse_args(["compute"])
    assert args.input == "-"
    assert args.theta is None
    assert callable(args.handler)


# --- the README's example, pasted into a shell -----------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_example_works_when_pasted(tmp_path: Path) -> None:
    text = README.read_text()
    after = text.split("`compute` example", 1)[1]
    blocks = re.findall(r"```(\w+)\n(.*?)```", after, re.S)
    (lang, command), (out_lang, shown) = blocks[:2]
    assert (lang, out_lang) == ("sh", "json")
    assert command.startswith(".venv/bin/harvest-async compute ")
    # the same command through this interpreter (the README's path is the venv's script)
    script = command.replace(".venv/bin/harvest-async", f"{sys.executable} -m harvest_async")
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.splitlines() == shown.splitlines()
    assert done.returncode == 1  # as the README says: the second case is rejected
    assert "some cases were rejected" in done.stderr
