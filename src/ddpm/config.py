"""Configuration dataclasses: defaults are the paper's values, presets are named instances.

Every dataclass round-trips through plain JSON (``to_dict`` / ``from_dict``) so that the resolved
configuration can be saved beside every checkpoint and result.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import types
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

log = logging.getLogger(__name__)

ScheduleName = Literal["linear", "quadratic", "constant", "cosine"]
MeanType = Literal["eps", "x0", "mu"]  # what the network predicts (Table 2)
VarType = Literal["fixed_beta", "fixed_beta_tilde", "learned", "learned_range"]  # Σ_θ (Sec. 3.2)
LEARNED_VAR_TYPES = ("learned", "learned_range")  # the network outputs Σ_θ too
LossType = Literal["simple", "vlb", "hybrid", "mu_mse"]  # Eq. 14, Eq. 5, Nichol & Dhariwal, Table 2
TSamplerName = Literal["uniform", "loss-second-moment"]  # how training draws t (ddpm.train.t_sampling)
DatasetName = Literal["digits", "cifar10", "folder", "lmdb", "npz", "toy2d"]
SplitBy = Literal["name", "position"]  # how a held-out split is drawn (ddpm.data.base)
NAMED_DATASETS = ("folder", "lmdb")  # datasets whose items have names: a file's path, an LMDB key

# The DiffusionConfig fields each β schedule reads (ddpm.schedules.make_betas); an option a schedule does not
# read is refused when given, rather than silently ignored.
SCHEDULE_PARAMETERS: dict[str, tuple[str, ...]] = {
    "linear": ("beta_start", "beta_end"), "quadratic": ("beta_start", "beta_end"),
    "constant": ("beta_end",), "cosine": (),
}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the option."""


# Seeds are integers in 0..MAX_SEED; ddpm.rng hashes (seed, purpose, index…) into each generator's 63-bit seed
# (e.g. sample i of a run is stream (seed, "sample", i)), so no seed is mixed into another by arithmetic.
MAX_SEED = 2**32 - 1

# Every β schedule table is a float64 vector of T entries (ddpm.schedules), built from whatever T a config or a
# checkpoint's meta.json says: the paper uses 1000, continuous-time limits are approached by 4000 (Nichol &
# Dhariwal); 10^5 keeps the tables at a few MB while 10^9 would ask for gigabytes before anything is checked.
MAX_T = 100_000
# Image sizes that no weight shape reveals (the U-Net's weights are the same at any size), but that size every
# activation and sample: the largest DDPM models are 256², diffusers' largest UNet2DModel 1024².
MAX_IMAGE_SIZE = 4096


def cut(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters (the last one "…"): a name or message from a file may be megabytes."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, so that a hostile value still makes one short line; an
    integer too long for that is named by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**50:
        return f"an integer of {value.bit_length()} bits"  # (repr even fails past sys.get_int_max_str_digits)
    return cut(repr(value), limit)


def _bounds_text(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    """'>= 1', '> 0', 'in 1..4096' (integers) or 'in [0, 1)' (reals), as the checks below say it."""
    def num(x: float) -> str:
        return f"{x:g}" if isinstance(x, float) else str(x)

    if lo is not None and hi is not None:
        if isinstance(lo, int) and isinstance(hi, int) and not (lo_open or hi_open):
            return f"in {lo}..{hi}"
        return f"in {'(' if lo_open else '['}{num(lo)}, {num(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {num(lo)}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {num(hi)}"
    return ""


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` when it is an integer (not a bool) in lo..hi; else a ConfigError naming ``name``."""
    bounds = _bounds_text(lo, hi)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer{' ' + bounds if bounds else ''}, got {shown(value)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{name} must be {bounds}, got {shown(value)}")
    return int(value)


def check_float(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a float when it is a finite number within the bounds; else a ConfigError naming ``name``.

    NaN and ±inf are refused everywhere: NaN slips through every comparison (``nan <= 0`` is False), and no
    option of this project means anything at infinity.
    """
    bounds = _bounds_text(lo, hi, lo_open, hi_open)
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    try:
        v = float(value) if number else math.nan
    except OverflowError:  # an integer beyond float's range, e.g. 10**400 from JSON
        v = math.inf
    if not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number{' ' + bounds if bounds else ''}, got {shown(value)}")
    if lo is not None and (v <= lo if lo_open else v < lo) or hi is not None and (v >= hi if hi_open else v > hi):
        raise ConfigError(f"{name} must be {bounds}, got {shown(value)}")
    return v


def check_seed(name: str, value: Any) -> int:
    """A seed: an integer in 0..MAX_SEED."""
    return check_int(name, value, 0, MAX_SEED)


@dataclass(frozen=True)
class UNetConfig:
    """The paper's U-Net (Sec. 4, Appendix B)."""

    kind: Literal["unet"] = "unet"
    image_size: int = 32                            # spatial size of the (square) input
    in_channels: int = 3                            # image channels
    base_channels: int = 128                        # channels at the first resolution
    channel_mults: tuple[int, ...] = (1, 2, 2, 2)   # channel multiplier per resolution
    num_res_blocks: int = 2                         # residual blocks per resolution
    attn_resolutions: tuple[int, ...] = (16,)       # resolutions that get self-attention
    dropout: float = 0.1                            # dropout inside residual blocks
    num_groups: int = 32                            # GroupNorm groups
    num_classes: int | None = None                  # K classes (index K: "no class"); None: unconditional

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one x_t: (channels, image_size, image_size)."""
        return (self.in_channels, self.image_size, self.image_size)


@dataclass(frozen=True)
class MLPConfig:
    """A small time-conditioned MLP for 2-D toy data."""

    kind: Literal["mlp"] = "mlp"
    dim: int = 2                # data dimension
    hidden: int = 128           # hidden width
    depth: int = 3              # hidden layers
    time_embed_dim: int = 64    # sinusoidal embedding width

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one x_t: (dim,)."""
        return (self.dim,)

    @property
    def num_classes(self) -> None:
        """The toy MLP is unconditional (no data it trains on has labels)."""
        return None


ModelConfig = UNetConfig | MLPConfig


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process and the reverse-process parameterization (Sec. 2-3)."""

    schedule: ScheduleName = "linear"   # β schedule
    T: int = 1000                       # number of diffusion steps
    beta_start: float = 1e-4            # β_1 (linear, quadratic; see SCHEDULE_PARAMETERS)
    beta_end: float = 0.02              # β_T (linear, quadratic); β_t for every t ("constant")
    mean_type: MeanType = "eps"         # network predicts ε (Eq. 11), x₀ or μ̃
    var_type: VarType = "fixed_beta"    # σ_t² = β_t, β̃_t, or learned
    loss_type: LossType = "simple"      # L_simple (Eq. 14) by default
    hybrid_lambda: float = 0.001        # λ in L_simple + λ·L_vlb (Nichol & Dhariwal)
    levels: int = 256                   # pixel levels of the discretized decoder (Eq. 13)

    @property
    def learn_sigma(self) -> bool:
        """Whether the network outputs Σ_θ too (Sec. 3.2): the one place that decides its output channels."""
        return self.var_type in LEARNED_VAR_TYPES


def network_out_channels(model: ModelConfig, diffusion: DiffusionConfig) -> int:
    """Output channels of the network: its prediction of ε, x₀ or μ̃, and as many again when Σ_θ is learned."""
    return model.sample_shape[0] * (2 if diffusion.learn_sigma else 1)


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are prepared (their shape is the model's ``sample_shape``)."""

    dataset: DatasetName = "digits"     # which loader
    path: str | None = None             # archive, folder, LMDB or .npz path (None: built-in data)
    random_flip: bool = False           # random horizontal flips during training
    held_out_fraction: float = 0.1      # test split for data without one, fixed by `split_seed` (0: none, all train)
    split_seed: int = 0                 # seed of the fixed held-out split
    split_by: SplitBy | None = None     # held out by each item's "name" or by "position" (None: `split_rule`)
    download: bool = False              # allow downloading (only CIFAR-10 supports it)

    @property
    def split_rule(self) -> SplitBy:
        """How the held-out split is drawn: ``split_by`` when set, else by name where items have names (a
        folder's files, an LMDB's keys: adding items moves no other) and by position in arrays (digits, .npz)."""
        if self.split_by is not None:
            return self.split_by
        return "name" if self.dataset in NAMED_DATASETS else "position"


@dataclass(frozen=True)
class TrainConfig:
    """The paper's training recipe (Appendix B)."""

    lr: float = 2e-4                    # Adam learning rate
    batch_size: int = 128               # global batch size (split over processes)
    warmup_steps: int = 5000            # linear learning-rate warm-up
    grad_clip: float = 1.0              # gradient-norm clipping
    ema_decay: float = 0.9999           # EMA of the weights
    ema_warmup_power: float | None = 0.75  # EMA decay 1 − n^−p until ema_decay (train.ema); None: no warm-up
    total_steps: int = 800_000          # training steps
    seed: int = 0                       # seeds the weights, the data order and the noise
    log_every: int = 100                # steps between log rows
    sample_every: int = 10_000          # steps between EMA sample grids (0: never)
    checkpoint_every: int = 10_000      # steps between checkpoints
    keep_checkpoints: int = 3           # the last K checkpoints are kept
    num_workers: int = 0                # DataLoader workers
    bf16: bool = False                  # bfloat16 autocast for the forward pass
    compile: bool = False               # torch.compile the network
    t_sampler: TSamplerName = "uniform"  # t uniform (Algorithm 1), or by importance, loss weighted 1/(T·p_t)
    nonfinite_policy: Literal["stop", "skip"] = "stop"  # what a NaN/Inf loss or gradient does
    label_dropout: float = 0.1          # P(label → "no class") per example: one network for p(x|c) and p(x)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; saved as JSON beside every checkpoint."""

    name: str = "custom"
    model: ModelConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def network_out_channels(self) -> int:
        """Output channels of this run's network (see ``network_out_channels``)."""
        return network_out_channels(self.model, self.diffusion)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """A run config from JSON; configs written before the shape lived on the model alone are migrated."""
        return from_dict(cls, migrate(d))


_SECTION_TYPES: dict[str, tuple[type, ...]] = {"model": (UNetConfig, MLPConfig), "diffusion": (DiffusionConfig,),
                                               "data": (DataConfig,), "train": (TrainConfig,)}


def _check_types(obj: Any, where: str) -> None:
    """Every field of a section dataclass has its declared type (a str where a number is due is refused)."""
    hints = get_type_hints(type(obj))
    for f in fields(obj):
        _convert(hints[f.name], getattr(obj, f.name), f"{where}.{f.name}")


def _check_values(cfg: RunConfig) -> None:
    """Each field on its own: its type, finite, within its range (the cross-field rules follow in validate)."""
    if not isinstance(cfg.name, str):
        raise ConfigError(f"name must be a string, got {cfg.name!r}")
    for where in ("model", "diffusion", "data", "train"):
        section = getattr(cfg, where)
        if not isinstance(section, _SECTION_TYPES[where]):
            raise ConfigError(f"{where} must be one of {[c.__name__ for c in _SECTION_TYPES[where]]}, "
                              f"got {type(section).__name__}")
        _check_types(section, where)
    m = cfg.model
    if isinstance(m, UNetConfig):
        for name in ("image_size", "in_channels", "base_channels", "num_res_blocks", "num_groups"):
            check_int(f"model.{name}", getattr(m, name), 1)
        if not m.channel_mults:
            raise ConfigError("model.channel_mults must list at least one multiplier, got ()")
        for mult in m.channel_mults:
            check_int("model.channel_mults", mult, 1)
        check_float("model.dropout", m.dropout, 0.0, 1.0, hi_open=True)  # p = 1 drops everything
        if m.num_classes is not None:
            check_int("model.num_classes", m.num_classes, 1)
    else:
        for name in ("dim", "hidden", "depth"):  # depth 0 would leave the step out of the network entirely
            check_int(f"model.{name}", getattr(m, name), 1)
        # the sinusoidal embedding divides by dim // 2 − 1 (ddpm.nets.embedding)
        check_int("model.time_embed_dim", m.time_embed_dim, 4)
    d = cfg.diffusion
    check_int("diffusion.T", d.T, 1, MAX_T)
    for name in ("beta_start", "beta_end"):
        beta = check_float(f"diffusion.{name}", getattr(d, name))
        if not 0.0 < beta < 1.0:
            raise ConfigError(f"diffusion.{name}={beta} is not a variance: β_t must lie in (0, 1)")
    check_float("diffusion.hybrid_lambda", d.hybrid_lambda, 0.0)  # λ = 0 is L_simple alone
    check_int("diffusion.levels", d.levels, 2)
    a = cfg.data
    # the same rule as ddpm.data.base.held_out_indices, checked here before any data is read; 0 holds nothing out
    check_float("data.held_out_fraction", a.held_out_fraction, 0.0, 1.0, hi_open=True)
    check_seed("data.split_seed", a.split_seed)
    if a.split_by == "name" and a.dataset not in NAMED_DATASETS:
        raise ConfigError(f"data.split_by='name' needs items with names ({', '.join(NAMED_DATASETS)}); "
                          f"dataset {a.dataset!r} is split by position")
    t = cfg.train
    check_float("train.lr", t.lr, 0.0, lo_open=True)
    check_int("train.batch_size", t.batch_size, 1)
    check_int("train.warmup_steps", t.warmup_steps, 0)
    # a max-norm <= 0 zeroes or flips every gradient (clip_grad_norm_ scales by max_norm / norm)
    check_float("train.grad_clip", t.grad_clip, 0.0, lo_open=True)
    check_float("train.ema_decay", t.ema_decay, 0.0, 1.0, hi_open=True)
    if t.ema_warmup_power is not None:
        check_float("train.ema_warmup_power", t.ema_warmup_power, 0.0, lo_open=True)
    check_int("train.total_steps", t.total_steps, 1)
    check_seed("train.seed", t.seed)
    check_int("train.log_every", t.log_every, 1)
    check_int("train.sample_every", t.sample_every, 0)  # 0: never
    check_int("train.checkpoint_every", t.checkpoint_every, 1)
    check_int("train.keep_checkpoints", t.keep_checkpoints, 1)
    check_int("train.num_workers", t.num_workers, 0)
    # 0: the "no class" embedding never trains (no unconditional use); 1: every label dropped (an unconditional model)
    check_float("train.label_dropout", t.label_dropout, 0.0, 1.0)


def validate(cfg: RunConfig) -> None:
    """Raise ConfigError naming the option when the run configuration is inconsistent."""
    _check_values(cfg)
    d, m = cfg.diffusion, cfg.model
    if d.learn_sigma and d.loss_type in ("simple", "mu_mse"):
        raise ConfigError(
            f"diffusion.loss_type={d.loss_type!r} gives no gradient to a learned Σ "
            f"(var_type={d.var_type!r}); use 'vlb' or 'hybrid'"
        )
    if d.loss_type == "hybrid" and not d.learn_sigma:  # Nichol & Dhariwal add λ·L_vlb only to train Σ
        raise ConfigError(
            f"diffusion.loss_type='hybrid' trains a learned Σ through the bound (the mean is stopped there), but "
            f"var_type={d.var_type!r} is fixed: it would train L_simple and report the bound in its loss; use "
            "'simple', or var_type='learned_range'"
        )
    if d.loss_type == "mu_mse" and d.mean_type != "mu":
        raise ConfigError("diffusion.loss_type='mu_mse' is the μ̃-prediction baseline: set mean_type='mu'")
    if cfg.data.dataset == "toy2d" and m.sample_shape != (2,):
        raise ConfigError(f"data.dataset='toy2d' holds 2-D points, but the model's samples have shape "
                          f"{m.sample_shape}: use an MLP model with dim=2 (the toy2d preset)")
    if isinstance(m, UNetConfig):
        halvings = len(m.channel_mults) - 1
        # a size has fewer halvings than bits: checked first, so that 2**halvings is only built when small
        if halvings >= m.image_size.bit_length() or m.image_size % 2**halvings:
            factor = f"2^{halvings}" if halvings >= 64 else str(2**halvings)
            raise ConfigError(
                f"model.image_size={shown(m.image_size)} must be divisible by {factor} (model.channel_mults "
                f"has {len(m.channel_mults)} levels: the U-Net halves it {halvings} times)"
            )
        # an attention resolution the U-Net never reaches would silently add no attention at all
        sizes = [m.image_size // 2**i for i in range(len(m.channel_mults))]
        missing = [r for r in m.attn_resolutions if r not in sizes]
        if missing:
            raise ConfigError(f"model.attn_resolutions {shown(missing)} are not resolutions of this U-Net "
                              f"(image_size={m.image_size}, {len(sizes)} levels: {sizes})")
        if m.base_channels % m.num_groups:
            raise ConfigError(
                f"model.base_channels={m.base_channels} must be divisible by model.num_groups={m.num_groups}"
            )


# --- JSON round trip ---------------------------------------------------------------------------

def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain JSON-able dicts, lists and scalars."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        dcs = [a for a in args if dataclasses.is_dataclass(a)]
        if dcs and isinstance(value, dict):
            kind = value.get("kind")
            for a in dcs:
                if kind == a.kind:  # type: ignore[attr-defined]
                    return from_dict(a, value, where)
            raise ConfigError(f"{where}.kind={shown(kind)} is not one of {[a.kind for a in dcs]}")  # type: ignore[attr-defined]
        for a in args:
            if a is not type(None):
                return _convert(a, value, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be an object, got {shown(value)}")
        return from_dict(tp, value, where)
    if origin is tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # a single number given for a list, e.g. --attn_resolutions 16
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {shown(value)}")
        (elem, *_rest) = get_args(tp)
        return tuple(_convert(elem, v, where) for v in value)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}={shown(value)} is not one of {list(get_args(tp))}")
        return value
    if tp is float:  # a str (e.g. --lr abc), a bool or a list is no number; NaN and ±inf are none either
        return check_float(where, value)
    if tp is int:  # not a bool, not 2.0
        return check_int(where, value)
    if tp in (bool, str) and not isinstance(value, tp):
        raise ConfigError(f"{where} must be {'true or false' if tp is bool else 'a string'}, got {shown(value)}")
    return value


def from_dict(cls: Any, d: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from a dict, checking names and types; unknown keys are an error."""
    if not isinstance(d, dict):  # e.g. a config.json holding a list
        raise ConfigError(f"{where} must be an object of options, got {type(d).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(unknown)} in {where}; known: {sorted(names)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}" if where != "config" else k) for k, v in d.items()}
    return cls(**kwargs)


# Another name for a field: ``channels`` is the images' channel count, which the U-Net calls in_channels.
ALIASES = {"channels": "model.in_channels"}  # short option names of fields (U-Net configs)

# Fields that configs written before ddpm 0.2 held, and where each fact lives now.
MOVED_FIELDS = {
    "data.image_size": "model.image_size",
    "data.channels": "model.in_channels",
    "model.learn_sigma": "diffusion.var_type",
}


def moved_hint(key: str) -> str:
    """Where a field that configs before ddpm 0.2 held (``key``: its dotted or bare name) lives now, as
    `` (data.channels is now model.in_channels: --channels)``; '' for any other key."""
    for old, new in MOVED_FIELDS.items():
        if key in (old, old.split(".")[1]):
            options = [a for a, field_ in ALIASES.items() if field_ == new] or [new.split(".")[1]]
            values = " " + " or ".join(LEARNED_VAR_TYPES) if old == "model.learn_sigma" else ""
            return f" ({old} is now {new}: --{options[0]}{values})"
    return ""


def migrate(d: Any) -> Any:
    """An older run config dict in today's layout: the moved fields dropped once they agree with their home.

    Before ddpm 0.2 the image size and channels were stored on both the model and the data, and the network's
    learned Σ on both the model (``learn_sigma``) and the diffusion (``var_type``); a stored pair that disagrees
    was never a valid run, and is refused naming both fields. Before the EMA warmed up (ddpm 0.3) its decay was
    constant: a stored train section without ``ema_warmup_power`` trained with none. A config from before
    class-conditional models (no ``model.num_classes``, no ``train.label_dropout``) is unconditional: its
    ``num_classes`` stays None, and ``label_dropout``, which an unconditional run never reads, takes the default.
    A folder or LMDB run from before ``data.split_by`` (ddpm 0.3) held out by position: it keeps that split.
    """
    if not isinstance(d, dict) or not all(isinstance(d.get(k, {}), dict) for k in ("model", "data", "diffusion")):
        return d  # from_dict names what is wrong with it
    model, data = dict(d.get("model", {})), dict(d.get("data", {}))
    sections = {"model": model, "data": data}
    default_model = UNetConfig() if model.get("kind", "unet") == "unet" else MLPConfig()
    for old, new in MOVED_FIELDS.items():
        sec, name = old.split(".")
        if name not in sections[sec]:
            continue
        value = sections[sec].pop(name)
        if old == "model.learn_sigma":
            var_type = d.get("diffusion", {}).get("var_type", DiffusionConfig.var_type)
            if value != (var_type in LEARNED_VAR_TYPES):
                raise ConfigError(f"this config's model.learn_sigma={shown(value)} contradicts diffusion.var_type="
                                  f"{shown(var_type)}; learn_sigma is no longer stored (var_type alone decides it)")
            continue
        if default_model.kind == "mlp":
            if old == "data.image_size":
                continue  # toy points had image_size 1: no model field holds it
            new = "model.dim"  # a point's channels are its dimensions
        now = model.get(new.split(".")[1], getattr(default_model, new.split(".")[1]))
        if value != now:
            raise ConfigError(f"this config's {old}={shown(value)} contradicts {new}={shown(now)}; {old} is no "
                              f"longer stored ({new} alone decides it)")
    migrated = {**d, **{k: v for k, v in sections.items() if k in d}}
    if isinstance(d.get("train"), dict) and "ema_warmup_power" not in d["train"]:
        migrated["train"] = {**d["train"], "ema_warmup_power": None}
    if isinstance(d.get("data"), dict) and "split_by" not in d["data"] \
            and d["data"].get("dataset", DataConfig.dataset) in NAMED_DATASETS:
        migrated["data"] = {**migrated["data"], "split_by": "position"}
    if isinstance(d.get("train"), dict) and "label_dropout" not in d["train"]:
        migrated["train"] = {**migrated["train"], "label_dropout": TrainConfig.label_dropout}
    return migrated


def override(cfg: RunConfig, **changes: Any) -> RunConfig:
    """Return ``cfg`` with fields replaced by name; a name may be bare (``lr``) or dotted (``train.lr``).

    A bare name must belong to exactly one section; ``channels`` is ``model.in_channels``. A field that moved
    (``data.image_size``) is refused naming its home, and a β parameter the schedule does not read is refused.
    """
    sections = {"model": cfg.model, "diffusion": cfg.diffusion, "data": cfg.data, "train": cfg.train}
    updates: dict[str, dict[str, Any]] = {k: {} for k in sections}
    top: dict[str, Any] = {}
    given: dict[tuple[str, str], str] = {}  # (section, field) -> the name it was given under

    def put(sec: str, name: str, key: str, value: Any) -> None:
        # lr=… and train.lr=… together would leave "the last wins" to dict order: refuse instead
        if (sec, name) in given:
            raise ConfigError(f"{given[sec, name]} and {key} both set {sec}.{name}: give it once")
        given[sec, name] = key
        updates[sec][name] = value

    for key, value in changes.items():
        if key in MOVED_FIELDS:
            raise ConfigError(f"option {key!r} is no longer a field{moved_hint(key)}")
        if key in ALIASES and isinstance(cfg.model, UNetConfig):
            sec, name = ALIASES[key].split(".")
            put(sec, name, key, value)
            continue
        if "." in key:
            sec, name = key.split(".", 1)
            if sec not in sections:
                raise ConfigError(f"unknown config section {sec!r} in option {key!r}")
            owners = [sec] if name in {f.name for f in fields(sections[sec])} else []
        elif key == "name":
            top["name"] = value
            continue
        else:
            name = key
            owners = [s for s, obj in sections.items() if name in {f.name for f in fields(obj)}]
        if not owners:
            raise ConfigError(f"unknown option {key!r}{moved_hint(key)}")
        if len(owners) > 1:
            raise ConfigError(f"option {key!r} is ambiguous: use one of {[f'{o}.{name}' for o in owners]}")
        put(owners[0], name, key, value)
    new_sections = {}
    for sec, obj in sections.items():
        if updates[sec]:
            merged = {**to_dict(obj), **to_dict(updates[sec])}
            new_sections[sec] = from_dict(type(obj), merged, sec)
        else:
            new_sections[sec] = obj
    new = RunConfig(name=top.get("name", cfg.name), **new_sections)  # every value checked first, then its use
    schedule = new_sections["diffusion"].schedule
    for name in ("beta_start", "beta_end"):
        if name in updates["diffusion"] and name not in SCHEDULE_PARAMETERS[schedule]:
            raise ConfigError(f"{given['diffusion', name]} is not used by diffusion.schedule={schedule!r}, which "
                              f"takes {', '.join(SCHEDULE_PARAMETERS[schedule]) or 'no β parameter'}")
        old_value = getattr(cfg.diffusion, name)
        if "schedule" in updates["diffusion"] and name not in SCHEDULE_PARAMETERS[schedule] \
                and name in SCHEDULE_PARAMETERS[cfg.diffusion.schedule] and old_value != getattr(DiffusionConfig, name):
            # e.g. digits-nll's β_1 = 2.5e-3, the reason that preset exists, dropped by --schedule cosine
            log.warning("diffusion.schedule=%r does not read %s=%g, which %s sets; that value is left unused",
                        schedule, name, old_value, cfg.name)
    if "hybrid_lambda" in updates["diffusion"] and new_sections["diffusion"].loss_type != "hybrid":
        raise ConfigError(f"{given['diffusion', 'hybrid_lambda']} is the weight of L_vlb in loss_type='hybrid'; "
                          f"diffusion.loss_type={new_sections['diffusion'].loss_type!r} does not read it (add "
                          "--loss_type hybrid, or leave it out)")
    if "label_dropout" in updates["train"] and new_sections["model"].num_classes is None:
        raise ConfigError(f"{given['train', 'label_dropout']} applies to class-conditional models only: set "
                          "model.num_classes too")
    return new


# --- resuming: what may change between the checkpoint and the resumed run ---------------------

# fields that may change when a run is resumed: they do not change what is being trained
RESUMABLE_CHANGES = {
    "train.total_steps", "train.log_every", "train.sample_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.num_workers", "train.compile", "data.path", "data.download",
}


def config_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names whose values differ between two config dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        name = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, name + ".")
        elif va != vb:
            out.append(name)
    return out


def check_resume_config(requested: RunConfig, saved: dict[str, Any]) -> None:
    """A resumed run must train the same thing: differences outside RESUMABLE_CHANGES are an error.

    ``saved`` is the checkpoint's config dict, in the layout of the ddpm that wrote it (migrated first).
    """
    saved = migrate(saved)
    diffs = [d for d in config_differences(requested.to_dict(), saved) if d not in RESUMABLE_CHANGES]
    if diffs:
        raise ConfigError(
            "the config contradicts the checkpoint being resumed in "
            + ", ".join(f"{d} (checkpoint: {_lookup(saved, d)!r})" for d in diffs)
        )


def _lookup(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None  # type: ignore[assignment]
    return d


# --- presets: the paper's runs (Appendix B) and CPU-scale runs ----------------------------------

def _unet256(name: str, steps: int, flip: bool, var_type: VarType) -> RunConfig:
    # the paper trains on every image of CelebA-HQ and the LSUN training sets (and measures FID against them)
    return RunConfig(
        name=name,
        model=UNetConfig(image_size=256, channel_mults=(1, 1, 2, 2, 4, 4), dropout=0.0),
        diffusion=DiffusionConfig(var_type=var_type),
        data=DataConfig(dataset="folder", random_flip=flip, held_out_fraction=0.0),
        train=TrainConfig(lr=2e-5, batch_size=64, total_steps=steps),
    )


def _digits(name: str, diffusion: DiffusionConfig, total_steps: int = 1500) -> RunConfig:
    """The digits network and recipe (1.1M parameters) with ``diffusion``."""
    return RunConfig(
        name=name,
        model=UNetConfig(image_size=8, in_channels=1, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
                         attn_resolutions=(4,), dropout=0.0, num_groups=8),
        diffusion=diffusion,
        data=DataConfig(dataset="digits", random_flip=False),
        train=TrainConfig(lr=1e-3, batch_size=128, warmup_steps=100, ema_decay=0.999,
                          total_steps=total_steps, log_every=50, sample_every=0, checkpoint_every=500),
    )


PRESETS: dict[str, RunConfig] = {
    "cifar10": RunConfig(
        name="cifar10",
        model=UNetConfig(),  # 35.7M parameters
        diffusion=DiffusionConfig(),
        data=DataConfig(dataset="cifar10", random_flip=True),
        train=TrainConfig(lr=2e-4, batch_size=128, total_steps=800_000),
    ),
    # 114M parameters each; the paper trained CelebA-HQ 0.5M, church 1.2M, bedroom 2.4M, cat 1.8M steps.
    # The official 256x256 runs sample with σ² = β̃ and flip all but LSUN cat (scripts/run_lsun.py).
    "celebahq256": _unet256("celebahq256", 500_000, True, "fixed_beta_tilde"),
    "lsun_church256": _unet256("lsun_church256", 1_200_000, True, "fixed_beta_tilde"),
    "lsun_bedroom256": _unet256("lsun_bedroom256", 2_400_000, True, "fixed_beta_tilde"),
    "lsun_cat256": _unet256("lsun_cat256", 1_800_000, False, "fixed_beta_tilde"),
    # scikit-learn's 8x8 digits: 17 grey levels (0..16), one channel; sized for a laptop CPU
    "digits": _digits("digits", DiffusionConfig(levels=17)),
    # the digits for bits/dim: the forward process starts at σ_1 = √β_1 = 0.05, near half a level's bin (1/16 on
    # [-1, 1]), so the discretized decoder L_0 (Eq. 13) rounds to the 17 levels; from the paper's σ_1 = 0.01 (set
    # for 256 levels) the network must itself denoise far below the bin, which costs ~0.86 bits/dim; and twice the
    # steps (docs/experiments.md, "Likelihood-first training")
    "digits-nll": _digits("digits-nll", DiffusionConfig(levels=17, beta_start=2.5e-3), total_steps=3000),
    "toy2d": RunConfig(
        name="toy2d",
        model=MLPConfig(),
        diffusion=DiffusionConfig(T=100, beta_start=1e-3, beta_end=0.1),
        data=DataConfig(dataset="toy2d"),
        train=TrainConfig(lr=1e-3, batch_size=256, warmup_steps=100, ema_decay=0.995, total_steps=3000,
                          log_every=100, sample_every=0, checkpoint_every=1000),
    ),
}


def preset(name: str) -> RunConfig:
    """The named preset; an unknown name is an error listing the known ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name]
