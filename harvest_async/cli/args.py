"""Argument types shared by the subcommands: one wording for every bad value."""

from __future__ import annotations

import argparse
import math

__all__ = [
    "add_symbols_arg",
    "add_theta_arg",
    "finite_float",
    "non_negative_float",
    "positive_float",
    "positive_int",
    "symbol_list",
]


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def finite_float(text: str) -> float:
    return _number(text)


def positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def symbol_list(text: str) -> str:
    """A comma list of symbols, or '*' (checked again, with SYMBOLS' rules, by config)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma list of symbols, or '*'")
    return ",".join(names)


def add_symbols_arg(p: argparse.ArgumentParser, help_text: str) -> None:
    """`--symbols A,B,...`: the one meaning of --symbols in every command (a count is
    `--symbol-count`)."""
    p.add_argument("--symbols", type=symbol_list, metavar="A,B,...", help=help_text)


def add_theta_arg(p: argparse.ArgumentParser, help_text: str) -> None:
    """`--theta FILE` (alias `--theta-file`): tunables from a TOML or JSON file."""
    p.add_argument(
        "--theta",
        "--theta-file",
        dest="theta",
        metavar="FILE",
        help=f"{help_text} (TOML if the name ends in .toml, else JSON; as THETA_FILE)",
    )
