"""The one error type of compression: bad input, a foreign or damaged file, a decode that did not verify."""

from __future__ import annotations


class CompressionError(ValueError):
    """A compressed file or its inputs cannot be used; the message names the problem."""
