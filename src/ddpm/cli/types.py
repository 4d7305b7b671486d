"""argparse ``type=`` functions: a value of the wrong kind is refused while the command line is parsed.

argparse then prints one line, ``ddpm sample: error: argument --eta: expected a finite number, got 'nan'``, and
exits with code 2, before anything is loaded or written. Ranges that the library checks too (in the options
dataclasses, so that Python callers get the same refusal) are left to those checks, named as the options are
spelled here; these functions only make sure the value is of the right kind.
"""

from __future__ import annotations

import argparse
import math

from ..config import shown


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {shown(text)}") from None


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def finite_float(text: str) -> float:
    """A finite number: float() alone would take 'nan', 'inf' and '1e999' (inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {shown(text)}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {shown(text)}")
    return value


def int_list(text: str) -> tuple[int, ...]:
    """'1000,750,500' → (1000, 750, 500); at least one integer (an empty list would mean 'the default')."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {shown(text)}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {shown(text)}")
    return values
