"""The one error type of the data package."""

from __future__ import annotations


class DataError(ValueError):
    """Bad or missing data; the message names the file (or source) and the problem."""
