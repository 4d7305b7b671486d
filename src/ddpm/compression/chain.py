"""Algorithms 3 and 4 as a real code: bits-back coding over the diffusion's Markov chain, Bit-Swap order.

Sender, for t = 1..T: pop x_t ~ q(x_t|x_{t−1}) off the stack (borrowing bits), then push x_{t−1} with
p_θ(x_{t−1}|x_t) (x_0 with Eq. 13's discretized decoder); finally push x_T with p(x_T) = N(0, I).
Receiver, the exact reverse: pop x_T, then for t = T..1 pop x_{t−1} with p_θ(x_{t−1}|x_t) and push
x_t back with q(x_t|x_{t−1}), returning the borrowed bits — so it meets x̂₀(x_t) (Eq. 15) on the way
down, as Fig. 6 shows. The expected net length is Σ_t E[log q − log p] = the bound L of Eq. 5.

Latents live on grids x_t = i·δ_t with δ_t a fixed fraction of the narrowest Gaussian that codes x_t,
so discretization costs almost nothing; both sides compute every model in float64 from the same
float32 network outputs, which must be bit-identical (same batch composition, threads and dtype).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..data.levels import from_levels
from ..diffusion import GaussianDiffusion, Model
from ..likelihood import discretized_gaussian_log_likelihood
from ..schedules import Schedule
from .stack import Stack

Preview = Callable[[int, torch.Tensor], None]  # (t, x̂₀ of the batch)


def latent_grid(s: Schedule, ratio: float) -> np.ndarray:
    """δ_t for x_1..x_T (index t − 1): ``ratio`` × the smaller of q's std √β_t and the posterior's √β̃_{t+1}."""
    width = s.betas.numpy().copy() ** 0.5
    width[:-1] = np.minimum(width[:-1], s.beta_tilde.numpy()[1:] ** 0.5)
    return ratio * width


def decoder_probabilities(mean: np.ndarray, log_scale: np.ndarray, levels: int) -> np.ndarray:
    """p_θ(x_0 = each level | x_1) of Eq. 13 for each element: (n, L) float64, rows sum to 1."""
    values = from_levels(torch.arange(levels), levels, torch.float64)[:, None]
    log_p = discretized_gaussian_log_likelihood(values, torch.from_numpy(mean)[None], torch.from_numpy(log_scale)[None],
                                                levels)
    return np.ascontiguousarray(torch.exp(log_p).T.numpy())


@dataclass(frozen=True)
class Reverse:
    """p_θ(x_{t−1}|x_t) of one step as float64 arrays, flat over the batch."""

    mean: np.ndarray
    log_var: np.ndarray
    pred_x0: torch.Tensor


@dataclass(frozen=True)
class ChainCode:
    """Everything both sides must agree on to code a batch with one chain per image."""

    diffusion: GaussianDiffusion   # the (possibly respaced) chain
    deltas: np.ndarray             # (T,) grid of x_1..x_T
    window: float                  # coding windows span ± window standard deviations
    clip_denoised: bool            # clip x̂₀ to [-1, 1] inside p_θ (as ``ddpm nll``)

    @property
    def T(self) -> int:
        return self.diffusion.T

    def reverse(self, model: Model, i_t: np.ndarray, t: int, shape: tuple[int, ...]) -> Reverse:
        """The network at x_t = i_t·δ_t: p_θ(x_{t−1}|x_t)."""
        x_t = torch.from_numpy(i_t * self.deltas[t - 1]).reshape(shape).float()
        steps = torch.full((shape[0],), t, dtype=torch.long)
        p = self.diffusion.p_mean_var(model, x_t, steps, self.clip_denoised)
        return Reverse(p.mean.double().flatten().numpy(), p.log_var.double().flatten().numpy(), p.pred_x0)

    def q_step(self, x_prev: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
        """q(x_t|x_{t−1}) = N(√α_t x_{t−1}, β_t) (Eq. 2) in units of x_t's grid: (mean, std)."""
        s, d = self.diffusion.schedule, self.deltas[t - 1]
        mean = float(s.alphas[t - 1]) ** 0.5 * x_prev / d
        return mean, np.full_like(mean, float(s.betas[t - 1]) ** 0.5 / d)

    def prior(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """p(x_T) = N(0, I) in units of x_T's grid."""
        return np.zeros(n), np.full(n, 1.0 / self.deltas[-1])


def encode_chain(stack: Stack, model: Model, code: ChainCode, k0: np.ndarray,
                 on_step: Callable[[], None] | None = None) -> None:
    """Push a batch of images (integer levels, (B, C, H, W)) onto ``stack`` (the sender)."""
    shape, levels = k0.shape, code.diffusion.levels
    i_prev = k0.reshape(-1).astype(np.int64)
    x_prev = from_levels(i_prev, levels, torch.float64).numpy()
    for t in range(1, code.T + 1):
        i_t = stack.pop_gaussian(*code.q_step(x_prev, t), code.window, escape=False)  # x_t ~ q(x_t|x_{t−1})
        p = code.reverse(model, i_t, t, shape)
        if t == 1:  # x_0 with the discretized decoder, Eq. 13
            stack.push_levels(i_prev, decoder_probabilities(p.mean, 0.5 * p.log_var, levels))
        else:
            d = code.deltas[t - 2]
            stack.push_gaussian(i_prev, p.mean / d, np.exp(0.5 * p.log_var) / d, code.window, escape=True)
        i_prev, x_prev = i_t, i_t * code.deltas[t - 1]
        if on_step is not None:
            on_step()
    stack.push_gaussian(i_prev, *code.prior(i_prev.size), code.window, escape=True)


def decode_chain(stack: Stack, model: Model, code: ChainCode, shape: tuple[int, ...],
                 on_step: Preview | None = None) -> np.ndarray:
    """Pop a batch of images of ``shape`` off ``stack`` (the receiver); returns integer levels."""
    levels = code.diffusion.levels
    i_t = stack.pop_gaussian(*code.prior(int(np.prod(shape))), code.window, escape=True)
    for t in range(code.T, 0, -1):
        p = code.reverse(model, i_t, t, shape)
        if on_step is not None:
            on_step(t, p.pred_x0)
        if t == 1:
            i_prev = stack.pop_levels(decoder_probabilities(p.mean, 0.5 * p.log_var, levels))
            x_prev = from_levels(i_prev, levels, torch.float64).numpy()
        else:
            d = code.deltas[t - 2]
            i_prev = stack.pop_gaussian(p.mean / d, np.exp(0.5 * p.log_var) / d, code.window, escape=True)
            x_prev = i_prev * d
        stack.push_gaussian(i_t, *code.q_step(x_prev, t), code.window, escape=False)  # bits back
        i_t = i_prev
    return i_t.reshape(shape)
