"""Class conditioning and classifier-free guidance (Ho & Salimans 2022) as wrappers around the model callable.

Samplers, the bound and the losses call ``model(x_t, step)``; a class-conditional network is called
``net(x_t, step, y)`` with y in 0..K−1 for a class and K for "no class" (∅, what label dropout trained).
``Conditioned`` fixes y; ``Guided`` returns the guided prediction

    ε̃(x_t, c) = (1 + w) ε_θ(x_t, c) − w ε_θ(x_t, ∅)                  (Ho & Salimans 2022, Eq. 6)

from one network call on the conditional and the null halves concatenated. w = 0 is the conditional model. This w
is Ho & Salimans' own: diffusers' ``guidance_scale`` is 1 + w (its 7.5 is w = 6.5 here). The guided call takes a
batch of 2B, so it needs about twice the activation memory of an unguided one. As both are plain
``model(x_t, step)`` callables, every sampler of the registry (and Analytic-DPM's mean) gets them.

Parameterizations: at a fixed x_t, ε, x̂₀ (Eq. 15) and μ̃ (Eq. 7) are affine in one another and the weights
(1 + w, −w) sum to 1, so guiding the network's x₀ or μ output is the same guidance as guiding its ε. A learned
Σ is not guided: its channels come from the conditional half (the conditional model's own variance).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..config import ConfigError, shown

Tensor = torch.Tensor
Network = Callable[..., Tensor]  # net(x_t, step, y=None)
ClassSpec = int | str | Sequence[int | str] | Tensor | None  # a class, one per sample, "all", or None (∅)
_LISTED = 20  # classes named in an error message


def model_classes(model: object) -> tuple[int | None, tuple[str, ...]]:
    """(K, the K class names) of a model callable; (None, ()) for an unconditional one.

    A loaded checkpoint (``ddpm.loading.LoadedModel``) knows its class names; a bare network knows only K, and
    its classes are named "0".."K−1".
    """
    num = getattr(model, "num_classes", None)
    if num is None:
        return None, ()
    names = getattr(model, "class_names", None)
    return int(num), tuple(names) if names else tuple(str(k) for k in range(num))


def known_classes(names: Sequence[str]) -> str:
    """'0 'airplane', 1 'automobile', …' for error messages (the first ``_LISTED``)."""
    listed = ", ".join(f"{k} {n!r}" for k, n in enumerate(names[:_LISTED]))
    return listed + (f", … ({len(names) - _LISTED} more)" if len(names) > _LISTED else "")


def class_index(value: int | str, names: Sequence[str], option: str = "class") -> int:
    """A class given by name or by index (a name wins when a class is named like another's index)."""
    if isinstance(value, str):
        if value in names:
            return list(names).index(value)
        if value.strip().isdecimal():  # not isdigit: '²' is a digit that int() refuses
            value = int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and 0 <= int(value) < len(names):
        return int(value)
    raise ConfigError(f"{option} {shown(value)} is not a class of this model; known classes (index name): "
                      f"{known_classes(names)}")


def class_labels(model: object, classes: ClassSpec, n: int, option: str = "classes") -> Tensor | None:
    """The labels (n,) of n samples: one class for all, one per sample, or "all" (n/K of each, class-major).

    None (no classes) is None: the network's "no class" ∅, i.e. unconditional sampling.
    """
    if classes is None:
        return None
    num, names = model_classes(model)
    if num is None:
        raise ConfigError(f"{option} given, but this model is unconditional (model.num_classes is None): a class "
                          "needs a class-conditional model")
    if isinstance(classes, str) and classes == "all":
        if n % num:
            raise ConfigError(f"{option}='all' draws as many samples of each of the {num} classes: the number of "
                              f"samples ({n}) must be a multiple of {num}")
        return torch.arange(num).repeat_interleave(n // num)
    if getattr(classes, "ndim", None) == 0:  # a 0-d tensor or array: one class, as the number it holds
        classes = classes.item()
    if isinstance(classes, (str, numbers.Number)):  # one class for all (a float or a bool: class_index refuses it)
        return torch.full((n,), class_index(classes, names, option), dtype=torch.long)
    try:
        values = classes.tolist() if torch.is_tensor(classes) else list(classes)
    except TypeError:
        raise ConfigError(f"{option} must be a class, a sequence of classes (one per sample) or 'all', got "
                          f"{shown(classes)}") from None
    if len(values) != n:
        raise ConfigError(f"{option} gives {len(values)} classes for {n} samples: give one class, one per sample, "
                          "or 'all'")
    return torch.tensor([class_index(v, names, option) for v in values], dtype=torch.long)


def check_guidance(guidance: float, conditional: bool, option: str = "guidance") -> float:
    """The guidance weight w: a finite number >= 0, and only with classes (guiding ∅ towards ∅ is no guidance)."""
    if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real) or not math.isfinite(guidance) \
            or guidance < 0:
        raise ConfigError(f"{option} must be a finite number >= 0 (w of classifier-free guidance), got "
                          f"{shown(guidance)}")
    if guidance and not conditional:
        raise ConfigError(f"{option}={guidance:g} needs a class to guide towards: give the class too")
    return float(guidance)


def repeat_labels(labels: Tensor, batch: int) -> Tensor:
    """The labels of a batch that repeats the labelled one m times (as ``bound_chunks`` stacks k times t)."""
    m, rest = divmod(batch, labels.shape[0])
    if rest or m < 1:
        raise ValueError(f"a batch of {batch} inputs for {labels.shape[0]} labels: the batch must repeat the "
                         "labelled batch a whole number of times")
    return labels if m == 1 else labels.repeat(m)


@dataclass(frozen=True)
class Conditioned:
    """``model(x_t, step)`` of a class-conditional network with the labels of its batch fixed."""

    net: Network      # net(x_t, step, y)
    labels: Tensor    # (B,) in 0..K (K: no class)

    def __call__(self, x_t: Tensor, steps: Tensor) -> Tensor:
        return self.net(x_t, steps, y=repeat_labels(self.labels, x_t.shape[0]).to(x_t.device))


@dataclass(frozen=True)
class Guided:
    """``model(x_t, step)`` giving ε̃ = (1 + w) ε_θ(x_t, c) − w ε_θ(x_t, ∅) from one batched network call."""

    net: Network         # net(x_t, step, y)
    labels: Tensor       # (B,) classes c in 0..K−1
    scale: float         # w >= 0 (finite)
    null_class: int      # K: "no class"
    learn_sigma: bool    # the output's second half is Σ's: taken from the conditional half, not guided

    def __post_init__(self) -> None:
        check_guidance(self.scale, True)  # NaN, ±inf or w < 0 would reach every sample unnoticed

    def __call__(self, x_t: Tensor, steps: Tensor) -> Tensor:
        y = repeat_labels(self.labels, x_t.shape[0]).to(x_t.device)
        both = self.net(torch.cat([x_t, x_t]), torch.cat([steps, steps]),
                        y=torch.cat([y, torch.full_like(y, self.null_class)]))
        cond, uncond = both.chunk(2)
        C = x_t.shape[1]
        mean = cond[:, :C] if self.learn_sigma else cond
        mean_null = uncond[:, :C] if self.learn_sigma else uncond
        guided = torch.lerp(mean_null, mean, 1.0 + self.scale)  # ε_∅ + (1 + w)(ε_c − ε_∅)
        return torch.cat([guided, cond[:, C:]], dim=1) if self.learn_sigma else guided


def guided(net: Network, labels: Tensor, scale: float, null_class: int, learn_sigma: bool
           ) -> Callable[[Tensor, Tensor], Tensor]:
    """The conditional model (w = 0: one network call) or the guided one (w > 0: one call on 2B inputs)."""
    if scale == 0:
        return Conditioned(net, labels)
    return Guided(net, labels, float(scale), null_class, learn_sigma)
