"""argparse types for the toolchain's numbers: a value out of range is a usage error (exit 2).

Checked when the command line is read, so that ``--batch-size 0`` is one line naming the option
before any data is loaded, not a TensorFlow traceback (or a silent default) minutes later.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def whole(minimum: int) -> Callable[[str], int]:
    """A whole number, at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text}: not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text}: must be at least {minimum}")
        return value

    return parse


def positive(text: str) -> float:
    """A finite number above 0 (seconds, a rate)."""
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: must be above 0")
    return value


def fraction(text: str) -> float:
    """A share strictly between 0 and 1 (a held-out share, an alarm threshold)."""
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be above 0 and below 1")
    return value


def share(text: str) -> float:
    """A share above 0 and at most 1 (an agreement target: 1 asks for every label)."""
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text}: must be above 0 and at most 1")
    return value


def k_of_n(text: str) -> tuple[int, int]:
    """An evidence rule ``K/N``: K of the last N scores (1 <= K <= N <= 20)."""
    k, slash, n = text.partition("/")
    if not slash or not k.strip().isdigit() or not n.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text}: give K/N, e.g. 2/3 (K of the last N scores)")
    rule = (int(k), int(n))
    if not 1 <= rule[0] <= rule[1] <= 20:
        raise argparse.ArgumentTypeError(f"{text}: needs 1 <= K <= N <= 20")
    return rule


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text}: not a finite number")
    return value
