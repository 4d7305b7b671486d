"""The entropy coder: a stack ANS coder (``constriction``) with the three models the chain needs.

Latents are integers on a grid (``x = i·δ``); a Gaussian over them is coded as a quantized Gaussian
on a window of ± ``window`` standard deviations around a centre both sides know (the rounded mean),
which keeps the fixed-point coder's smallest-probability floor from taxing a huge alphabet. Values
of p_θ's latents that fall outside their window are *escapes*: the window's two edge symbols flag
them and the exact offset follows in two 16-bit uniform symbols. Samples popped from q never need
an escape: they are drawn inside the window they are pushed back with.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import CompressionError

try:  # an optional dependency: pip install "ddpm[compress]"
    import constriction
except ModuleNotFoundError:  # pragma: no cover - exercised only without the extra
    constriction = None

_HALF = 1 << 16
_OFFSET = 1 << 31


def require_constriction() -> None:
    """Raise a clear error when the entropy-coding library is missing."""
    if constriction is None:
        raise CompressionError("compression needs the 'constriction' package: pip install 'ddpm[compress]'")


def window_half_width(std_units: np.ndarray, window: float) -> int:
    """W such that the symbols −W..W cover ± ``window`` standard deviations (grid units), at least 1."""
    return max(1, math.ceil(window * float(np.max(std_units))))


class Stack:
    """An ANS stack of 32-bit words, recording the lowest number of words it held (the low-water mark)."""

    def __init__(self, words: np.ndarray | None = None) -> None:
        require_constriction()
        self.coder = constriction.stream.stack.AnsCoder(words) if words is not None and words.size else \
            constriction.stream.stack.AnsCoder()
        self.low_water = self.coder.num_words()

    @property
    def num_words(self) -> int:
        return int(self.coder.num_words())

    def words(self) -> np.ndarray:
        """The compressed words, bottom of the stack first."""
        return self.coder.get_compressed()

    def _popped(self) -> None:
        self.low_water = min(self.low_water, self.num_words)

    # Gaussian latents on a grid, in grid units (mean and std divided by δ)
    def push_gaussian(self, symbols: np.ndarray, mean: np.ndarray, std: np.ndarray, window: float,
                      escape: bool) -> None:
        """Push integers ``symbols`` with N(mean, std²) quantized to the integers (all arrays flat)."""
        centre = np.rint(mean).astype(np.int64)
        w = window_half_width(std, window)
        offset = symbols.astype(np.int64) - centre
        outside = np.abs(offset) > w
        if outside.any():
            if not escape:  # a sender draws inside the window; a receiver gets here only when decoding went astray
                raise CompressionError("a decoded latent lies outside the window it was drawn in")
            if np.abs(offset[outside]).max() >= _OFFSET:
                raise CompressionError("a latent lies more than 2^31 grid steps from its model's mean")
            u = (offset[outside] + _OFFSET).astype(np.uint64)
            halves = np.concatenate([u >> 16, u & (_HALF - 1)]).astype(np.int32)
            self.coder.encode_reverse(halves, constriction.stream.model.Uniform(_HALF))
            offset = np.where(outside, np.sign(offset) * (w + 1), offset)
        edge = w + 1 if escape else w
        family = constriction.stream.model.QuantizedGaussian(-edge, edge)
        self.coder.encode_reverse(offset.astype(np.int32), family, mean - centre, std)

    def pop_gaussian(self, mean: np.ndarray, std: np.ndarray, window: float, escape: bool) -> np.ndarray:
        """Pop integers coded (or to be coded) with ``push_gaussian``'s model; int64."""
        centre = np.rint(mean).astype(np.int64)
        w = window_half_width(std, window)
        edge = w + 1 if escape else w
        family = constriction.stream.model.QuantizedGaussian(-edge, edge)
        offset = self.coder.decode(family, mean - centre, std).astype(np.int64)
        self._popped()
        if escape:
            outside = np.abs(offset) > w
            n = int(outside.sum())
            if n:
                halves = self.coder.decode(constriction.stream.model.Uniform(_HALF), 2 * n).astype(np.uint64)
                self._popped()
                offset[outside] = ((halves[:n] << 16) | halves[n:]).astype(np.int64) - _OFFSET
        return centre + offset

    # pixel levels with a categorical (Eq. 13's discretized decoder)
    def push_levels(self, levels: np.ndarray, probs: np.ndarray) -> None:
        """Push integers 0..L−1 with per-symbol probabilities ``probs`` (n, L)."""
        self.coder.encode_reverse(levels.astype(np.int32), constriction.stream.model.Categorical(perfect=False),
                                  probs)

    def pop_levels(self, probs: np.ndarray) -> np.ndarray:
        """Pop integers 0..L−1 coded with ``push_levels``."""
        out = self.coder.decode(constriction.stream.model.Categorical(perfect=False), probs).astype(np.int64)
        self._popped()
        return out
