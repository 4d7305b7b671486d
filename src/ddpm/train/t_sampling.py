"""How training draws t: uniformly (Algorithm 1), or by importance from the losses' second moments.

The bound L = Σ_t L_t is estimated in Algorithm 1 by T·L_t with t uniform; a few t carry most of that estimate's
variance (Nichol & Dhariwal 2021, Sec. 3.3). Drawing t with probability p_t and weighting its loss by
1/(T·p_t) keeps the estimate unbiased, E_p[L_t/(T p_t)] = (1/T) Σ_t L_t, and p_t ∝ √E[L_t²] minimises its
variance. ``LossSecondMomentSampler`` keeps the last ``history`` losses of every t, draws uniformly until each t
has them all, then draws from p_t ∝ √(mean of its squared losses), mixed with a small uniform part so that no t
is starved and no weight explodes.
"""

from __future__ import annotations

from typing import get_args

import numpy as np
import torch

from ..config import TSamplerName
from ..diffusion import GaussianDiffusion

Tensor = torch.Tensor
T_SAMPLERS: tuple[str, ...] = get_args(TSamplerName)


class UniformSampler:
    """t ~ Uniform{1, …, T}, every weight 1 (Algorithm 1)."""

    learns = False  # whether update() changes what is drawn (the trainer gathers losses only for one that does)

    def __init__(self, diffusion: GaussianDiffusion) -> None:
        self.diffusion, self.T = diffusion, diffusion.T

    def probabilities(self) -> np.ndarray:
        """p_t for t = 1 … T."""
        return np.full(self.T, 1.0 / self.T)

    def draw(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``batch`` values of t in 1..T and their loss weights 1/(T·p_t)."""
        return self.diffusion.sample_t(batch, generator), torch.ones(batch)

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Nothing to learn."""

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(f"the uniform t-sampler has no state, got {sorted(state)}")


class LossSecondMomentSampler(UniformSampler):
    """p_t ∝ √(mean of the last ``history`` squared losses at t), once every t has them; uniform before."""

    learns = True

    def __init__(self, diffusion: GaussianDiffusion, history: int = 10, uniform_mix: float = 0.001) -> None:
        super().__init__(diffusion)
        self.uniform_mix = uniform_mix
        self.losses = np.zeros((self.T, history), dtype=np.float64)  # a ring per t, oldest overwritten
        self.counts = np.zeros(self.T, dtype=np.int64)               # losses seen per t (the ring's write position)

    def warm(self) -> bool:
        """Every t has a full history."""
        return bool((self.counts >= self.losses.shape[1]).all())

    def probabilities(self) -> np.ndarray:
        if not self.warm():
            return super().probabilities()
        p = np.sqrt((self.losses ** 2).mean(axis=1))
        p /= p.sum()
        return (1.0 - self.uniform_mix) * p + self.uniform_mix / self.T

    def draw(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        if not self.warm():
            return super().draw(batch, generator)  # the very draws of Algorithm 1
        p = torch.from_numpy(self.probabilities())
        index = torch.multinomial(p, batch, replacement=True, generator=generator)
        return index + 1, (1.0 / (self.T * p[index])).float()

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Record each example's (unweighted) loss under its t, in batch order."""
        history = self.losses.shape[1]
        for step, loss in zip(t.tolist(), losses.detach().double().cpu().tolist()):
            i = step - 1
            self.losses[i, self.counts[i] % history] = loss
            self.counts[i] += 1

    def state_dict(self) -> dict[str, Tensor]:
        return {"losses": torch.from_numpy(self.losses.copy()), "counts": torch.from_numpy(self.counts.copy())}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if set(state) != {"losses", "counts"}:
            raise ValueError(f"a loss-second-moment t-sampler state holds losses and counts, got {sorted(state)}")
        losses, counts = state["losses"].double().numpy(), state["counts"].long().numpy()
        if losses.shape != self.losses.shape or counts.shape != self.counts.shape or (counts < 0).any() \
                or not np.isfinite(losses).all():
            raise ValueError(f"t-sampler state of shapes {losses.shape}, {counts.shape} (or with negative counts or "
                             f"non-finite losses) does not fit T={self.T}, history {self.losses.shape[1]}")
        self.losses[...], self.counts[...] = losses, counts


def t_sampler_for(name: TSamplerName, diffusion: GaussianDiffusion) -> UniformSampler:
    """The t-sampler ``train.t_sampler`` names."""
    if name == "uniform":
        return UniformSampler(diffusion)
    if name == "loss-second-moment":
        return LossSecondMomentSampler(diffusion)
    raise ValueError(f"unknown t-sampler {name!r}; known: {', '.join(T_SAMPLERS)}")
