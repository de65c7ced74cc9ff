"""The calc-only guarantee: the kernel and its models import and run with every I/O
module blocked, and load nothing beyond the standard library and msgspec."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# Top-level modules a pure kernel must never need.
BLOCKED_TOP = [
    "redis",
    "hiredis",
    "anyio",
    "uvloop",
    "prometheus_client",
    "socket",
    "_socket",
    "ssl",
    "_ssl",
    "select",
    "selectors",
    "asyncio",
    "http",
    "urllib",
    "subprocess",
    "threading",
    "logging",
]
# harvest_async modules allowed besides the package itself.
ALLOWED_OWN = [
    "harvest_async.core",
    "harvest_async.core.kernel",
    "harvest_async.core.models",
    "harvest_async.errors",
]
# msgspec imports typing_extensions when it is installed (an optional, pure typing helper).
ALLOWED_THIRD_PARTY = ["msgspec", "typing_extensions"]

SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    BLOCKED_TOP = set(sys.argv[1].split(","))
    ALLOWED_OWN = set(sys.argv[2].split(","))


    def blocked(name):
        top = name.partition(".")[0]
        if top in BLOCKED_TOP:
            return True
        return top == "harvest_async" and name != "harvest_async" and name not in ALLOWED_OWN


    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if blocked(name):
                raise ImportError(f"calc-only: import of {name!r} is blocked")
            return None


    # Forget what site/startup already imported, so a later import must pass the blocker.
    for name in list(sys.modules):
        if blocked(name):
            del sys.modules[name]
    sys.meta_path.insert(0, Blocker())
    before = set(sys.modules)

    import harvest_async.core.kernel
    import harvest_async.core.models
    from harvest_async.core.kernel import compute
    from harvest_async.core.models import MarketState, Position, RiskProposal, Theta

    d = compute(
        Position(symbol="BTCUSDT", side="LONG", entry_price=100.0, unrealized_pnl=5.0,
                 age_sec=3600.0, current_sl=99.0),
        MarketState(sigma=0.01, ts=0.35, p_trend=0.5, p_mr=0.2, p_chop=0.3),
        RiskProposal(stop_dist_pct=0.02),
        Theta(),
    )
    print(json.dumps({
        "action": d.harvest_action,
        "R_net": d.R_net,
        "new": sorted(set(sys.modules) - before),
    }))
    """
)


def _run(*extra_flags: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, *extra_flags, "-c", SCRIPT, ",".join(BLOCKED_TOP), ",".join(ALLOWED_OWN)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def _outside_allowed(modules: list[str]) -> list[str]:
    allowed_own = {"harvest_async", *ALLOWED_OWN}
    bad = []
    for name in modules:
        top = name.partition(".")[0]
        if top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY:
            continue
        if name in allowed_own:
            continue
        bad.append(name)
    return bad


def test_kernel_runs_with_io_modules_blocked() -> None:
    result = _run()
    assert result["action"] == "PARTIAL_25"
    assert result["R_net"] == 2.45
    new = result["new"]
    assert isinstance(new, list)
    assert "harvest_async.core.kernel" in new
    assert _outside_allowed(new) == []
    assert not [m for m in new if m.partition(".")[0] in BLOCKED_TOP]


def test_package_init_imports_only_kernel_and_models() -> None:
    new = _run()["new"]
    assert isinstance(new, list)
    own = sorted(m for m in new if m.partition(".")[0] == "harvest_async")
    assert own == [
        "harvest_async",
        "harvest_async.core",
        "harvest_async.core.kernel",
        "harvest_async.core.models",
        "harvest_async.errors",
    ]


def test_blocker_really_blocks() -> None:
    """The harness itself works: importing a blocked module fails inside it."""
    script = SCRIPT + "\nimport harvest_async.tools.compute\n"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "redis,socket",
            "harvest_async.core,harvest_async.core.kernel,harvest_async.core.models,"
            "harvest_async.errors",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "calc-only: import of 'harvest_async.tools' is blocked" in proc.stderr
