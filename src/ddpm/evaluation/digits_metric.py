"""Offline sample-quality metric for the 8×8 digits: a small deterministic CNN stands in for Inception.

The classifier is trained on ``digits_arrays("train")`` (1,617 images) with a fixed recipe
(:class:`ClassifierRecipe`): fixed seed, fixed batch order, single thread, deterministic algorithms,
so the same recipe gives bit-identical weights on the same torch build. It is cached as a safetensors
file under ``cache_dir`` (default ``$XDG_CACHE_HOME/ddpm`` or ``~/.cache/ddpm``) whose name holds a
hash of the recipe, this module's recipe version and torch's major.minor version; a cache that cannot
be read or does not match is retrained (with a warning) and rewritten — never unpickled.

Its penultimate layer (64 ReLU features) defines a digits Fréchet distance (:func:`digits_frechet_distance`),
its softmax defines the mean max-softmax confidence and an Inception-Score-style
exp(E_x KL(p(y|x) ‖ p(y))) (:func:`classifier_score`), and :func:`evaluate_digits` reports both next to
a real-vs-real baseline computed with the same sample sizes.

Images are float tensors in [-1, 1] of shape (N, 1, 8, 8) (values outside are clamped), or integer
arrays of digit levels 0..16; (N, 8, 8) is accepted for either.

Typical values (default recipe, reference = the 180 test images): test accuracy 98.9%; sets of real train
images score FD 13.3 ± 2.8 (256 images; mean ± sd of 20 draws, from 8 to 17) and 8.3 ± 0.9 (1,000), confidence
≈ 0.99, class score ≈ 9.5 — one FD of 256 images is only good to about ±3;
uniform noise or shuffled-pixel digits score FD ≈ 290, confidence 0.64–0.73, class score ≈ 2.5–2.9;
all-black images FD ≈ 900, class score 1.0.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ddpm.data.digits import DIGITS_LEVELS, digits_arrays
from ddpm.data.levels import from_levels
from ddpm.evaluation.frechet import feature_statistics, frechet_distance
from ddpm.rng import generator, numpy_rng, seed_torch

__all__ = [
    "ClassifierRecipe",
    "ClassifierScore",
    "DigitsClassifier",
    "DigitsQuality",
    "classifier_accuracy",
    "classifier_cache_path",
    "classifier_score",
    "default_cache_dir",
    "digits_features",
    "digits_frechet_distance",
    "evaluate_digits",
    "load_digits_classifier",
    "real_fd_text",
    "to_digits_tensor",
    "train_digits_classifier",
]

# Bump when the network, the training loop or its seed rule changes, so that old cache files are not reused
# (2: the seeds of ddpm.rng).
RECIPE_VERSION = 2
NUM_CLASSES = 10
_INFER_BATCH = 2048
REAL_DRAWS = 20  # independent real sets whose FDs give the baseline's draw-to-draw spread


@dataclass(frozen=True)
class ClassifierRecipe:
    """Everything that determines the classifier's weights (its hash names the cache file)."""

    width: int = 32
    feature_dim: int = 64
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_shift: int = 1  # random translations by up to this many pixels (background-filled)
    seed: int = 0
    held_out_fraction: float = 0.1
    split_seed: int = 0

    def key(self) -> str:
        """Hex digest of the recipe, the recipe version and torch's major.minor version."""
        torch_version = ".".join(torch.__version__.split("+")[0].split(".")[:2])
        payload = {"recipe": asdict(self), "version": RECIPE_VERSION, "torch": torch_version}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class DigitsClassifier(nn.Module):
    """Two 3×3 convolutions, a 2×2 max-pool, a ReLU feature layer (the FD features) and a linear head."""

    def __init__(self, width: int = 32, feature_dim: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width * 16, feature_dim)
        self.head = nn.Linear(feature_dim, NUM_CLASSES)
        self.feature_dim = feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (N, feature_dim) of images (N, 1, 8, 8) in [-1, 1]."""
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, 10)."""
        return self.head(self.features(x))


@dataclass(frozen=True)
class ClassifierScore:
    """Classifier-based scores of one image set."""

    confidence: float  # mean over images of max_y p(y|x)
    class_score: float  # exp(E_x KL(p(y|x) || p(y))), p(y) = mean of p(y|x) over the set; in [1, 10]
    class_histogram: tuple[int, ...]  # number of images predicted as each digit 0..9
    n: int


@dataclass(frozen=True)
class DigitsQuality:
    """Digits metric of a sample set next to a real-vs-real baseline with the same set sizes."""

    fd: float  # FD(samples, reference)
    fd_real_vs_real: float  # FD(real, reference), real = n_real train images, disjoint from reference
    fd_real_mean: float  # mean FD(real draw, reference) over real_draws further draws of n_real train images
    fd_real_sd: float  # their standard deviation: how much one set's FD varies for a generator matching the data
    real_draws: int
    confidence: float
    confidence_real: float
    class_score: float
    class_score_real: float
    class_histogram: tuple[int, ...]
    class_histogram_real: tuple[int, ...]
    n_samples: int
    n_reference: int
    n_real: int  # = n_samples unless n_samples exceeds the train split (1,617)
    seed: int
    classifier_accuracy: float  # the classifier's accuracy on the whole test split
    reference_set: str = "digits test split"
    real_set: str = "digits train split, seeded subset"
    notes: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        """Plain dict (JSON-serialisable)."""
        return asdict(self)


def real_fd_text(q: DigitsQuality | dict) -> str:
    """The real baselines beside an FD, as reports and the CLI print them (``q`` or its ``as_dict()``)."""
    d = q.as_dict() if isinstance(q, DigitsQuality) else q
    return (f"real vs real {d['fd_real_vs_real']:.2f}; {d['real_draws']} real sets of {d['n_real']}: "
            f"{d['fd_real_mean']:.2f} ± {d['fd_real_sd']:.2f}")


# ----------------------------------------------------------------------------------------------------------
# inputs


def to_digits_tensor(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Images as float32 (N, 1, 8, 8) in [-1, 1]: floats are clamped, integers are levels 0..16."""
    x = torch.as_tensor(images) if isinstance(images, np.ndarray) else images
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor or numpy array, got {type(images).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
        raise ValueError(f"digits images must have shape (N, 1, 8, 8) or (N, 8, 8), got {tuple(x.shape)}")
    x = x.detach().cpu()
    if x.dtype.is_floating_point:
        if not torch.isfinite(x).all():
            raise ValueError("digits images contain non-finite values")
        return x.float().clamp(-1.0, 1.0)
    if x.dtype == torch.bool or x.dtype.is_complex:
        raise ValueError(f"digits images must be float in [-1, 1] or integer levels 0..16, got {x.dtype}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) > DIGITS_LEVELS - 1):
        raise ValueError(
            f"integer digits images must hold levels 0..{DIGITS_LEVELS - 1}, got range "
            f"[{int(x.min())}, {int(x.max())}] (convert 0..255 images to floats in [-1, 1] first)"
        )
    return from_levels(x, DIGITS_LEVELS)


def _check_count(x: torch.Tensor, name: str, minimum: int = 2) -> None:
    """Require at least ``minimum`` images."""
    if x.shape[0] < minimum:
        raise ValueError(f"{name} needs at least {minimum} images, got {x.shape[0]}")


# ----------------------------------------------------------------------------------------------------------
# training


@contextlib.contextmanager
def _deterministic_single_thread(seed: int) -> Iterator[None]:
    """Seeded global RNG, one thread and deterministic algorithms for the block; all restored after."""
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        seed_torch(seed, "classifier", 0)  # the initial weights
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(det, warn_only=det_warn)
            torch.set_num_threads(threads)


def _random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by integer (dy, dx) in [-max_shift, max_shift], filling with background −1."""
    if max_shift == 0:
        return x
    s = max_shift
    padded = F.pad(x, (s, s, s, s), value=-1.0)
    dy = torch.randint(0, 2 * s + 1, (x.shape[0],), generator=generator)
    dx = torch.randint(0, 2 * s + 1, (x.shape[0],), generator=generator)
    out = torch.empty_like(x)
    for i in range(2 * s + 1):
        for j in range(2 * s + 1):
            mask = (dy == i) & (dx == j)
            out[mask] = padded[mask, :, i : i + 8, j : j + 8]
    return out


def train_digits_classifier(recipe: ClassifierRecipe = ClassifierRecipe()) -> DigitsClassifier:
    """Train the classifier deterministically on the digits train split (no cache; ~3.5 s, one thread)."""
    images, labels = digits_arrays("train", recipe.held_out_fraction, recipe.split_seed)
    x_all, y_all = to_digits_tensor(images), torch.from_numpy(labels)
    steps_per_epoch = -(-len(x_all) // recipe.batch_size)
    with _deterministic_single_thread(recipe.seed):
        g = generator(recipe.seed, "classifier", 1)  # the batch order and the shifts
        model = DigitsClassifier(recipe.width, recipe.feature_dim)
        opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        total_steps = recipe.epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.lr, total_steps=total_steps)
        model.train()
        for _ in range(recipe.epochs):
            order = torch.randperm(len(x_all), generator=g)
            for start in range(0, len(x_all), recipe.batch_size):
                idx = order[start : start + recipe.batch_size]
                x = _random_shift(x_all[idx], recipe.max_shift, g)
                loss = F.cross_entropy(model(x), y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return model.eval()


# ----------------------------------------------------------------------------------------------------------
# cache


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ddpm``, or ``~/.cache/ddpm`` when XDG_CACHE_HOME is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ddpm"


def classifier_cache_path(cache_dir: str | os.PathLike | None, recipe: ClassifierRecipe) -> Path:
    """Path of the cached weights for ``recipe`` under ``cache_dir`` (default :func:`default_cache_dir`)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"digits_classifier-{recipe.key()[:16]}.safetensors"


def _read_cached(path: Path, recipe: ClassifierRecipe) -> DigitsClassifier:
    """Load cached weights; raises ValueError if the file is unreadable or does not match the recipe."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # safetensors raises its own error type for corrupt headers
        raise ValueError(f"cannot read classifier cache {path}: {exc}") from exc
    if metadata.get("key") != recipe.key():
        raise ValueError(f"classifier cache {path} was written for another recipe")
    model = DigitsClassifier(recipe.width, recipe.feature_dim)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"classifier cache {path} does not match the network: {exc}") from exc
    return model.eval()


def _write_cached(path: Path, model: DigitsClassifier, recipe: ClassifierRecipe) -> None:
    """Write the weights atomically (temporary file + rename) with the recipe in the metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = {"key": recipe.key(), "recipe": json.dumps(asdict(recipe)), "version": str(RECIPE_VERSION)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_digits_classifier(
    cache_dir: str | os.PathLike | None = None, recipe: ClassifierRecipe = ClassifierRecipe()
) -> DigitsClassifier:
    """The cached classifier for ``recipe``, training and caching it first if absent or unreadable."""
    path = classifier_cache_path(cache_dir, recipe)
    if path.exists():
        try:
            return _read_cached(path, recipe)
        except ValueError as exc:
            warnings.warn(f"{exc}; retraining the digits classifier", RuntimeWarning, stacklevel=2)
    model = train_digits_classifier(recipe)
    try:
        _write_cached(path, model, recipe)
    except OSError as exc:
        warnings.warn(f"could not cache the digits classifier at {path}: {exc}", RuntimeWarning, stacklevel=2)
    return model


# ----------------------------------------------------------------------------------------------------------
# metrics


def _classifier(classifier: DigitsClassifier | None, cache_dir: str | os.PathLike | None) -> DigitsClassifier:
    """The given classifier, or the cached default one."""
    return classifier if classifier is not None else load_digits_classifier(cache_dir)


@torch.no_grad()
def _features_and_logits(
    images: torch.Tensor | np.ndarray, classifier: DigitsClassifier
) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, D) and logits (N, 10), float64, computed in batches in eval mode."""
    x = to_digits_tensor(images)
    classifier.eval()
    feats, logits = [], []
    for start in range(0, x.shape[0], _INFER_BATCH):
        f = classifier.features(x[start : start + _INFER_BATCH])
        feats.append(f)
        logits.append(classifier.head(f))
    if not feats:
        return np.zeros((0, classifier.feature_dim)), np.zeros((0, NUM_CLASSES))
    return torch.cat(feats).double().numpy(), torch.cat(logits).double().numpy()


def digits_features(
    images: torch.Tensor | np.ndarray,
    classifier: DigitsClassifier | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """Penultimate-layer features (N, 64), float64, of digits images."""
    return _features_and_logits(images, _classifier(classifier, cache_dir))[0]


def _fd_of_features(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets."""
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def digits_frechet_distance(
    samples: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray,
    classifier: DigitsClassifier | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> float:
    """Fréchet distance between the classifier features of ``samples`` and ``reference``."""
    model = _classifier(classifier, cache_dir)
    return _fd_of_features(_features_and_logits(samples, model)[0], _features_and_logits(reference, model)[0])


def _score_from_logits(logits: np.ndarray) -> ClassifierScore:
    """Confidence, exp(E KL(p(y|x) || p(y))) and predicted-class histogram from logits (N, 10)."""
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    log_marginal = np.log(p.mean(axis=0))
    kl = (p * (log_p - log_marginal)).sum(axis=1)
    hist = np.bincount(p.argmax(axis=1), minlength=NUM_CLASSES)
    return ClassifierScore(
        confidence=float(p.max(axis=1).mean()),
        class_score=float(np.exp(kl.mean())),
        class_histogram=tuple(int(c) for c in hist),
        n=int(p.shape[0]),
    )


def classifier_score(
    samples: torch.Tensor | np.ndarray,
    classifier: DigitsClassifier | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> ClassifierScore:
    """Mean max-softmax confidence, Inception-Score-style class score and predicted-class histogram."""
    logits = _features_and_logits(samples, _classifier(classifier, cache_dir))[1]
    if logits.shape[0] == 0:
        raise ValueError("classifier_score needs at least 1 image, got 0")
    return _score_from_logits(logits)


def classifier_accuracy(
    classifier: DigitsClassifier | None = None,
    cache_dir: str | os.PathLike | None = None,
    split: str = "test",
    recipe: ClassifierRecipe = ClassifierRecipe(),
) -> float:
    """Accuracy of the classifier on a digits split (the test split by default)."""
    images, labels = digits_arrays(split, recipe.held_out_fraction, recipe.split_seed)  # type: ignore[arg-type]
    logits = _features_and_logits(images, _classifier(classifier, cache_dir))[1]
    return float((logits.argmax(axis=1) == labels).mean())


def evaluate_digits(
    samples: torch.Tensor | np.ndarray,
    n_reference: int | None = None,
    seed: int = 0,
    classifier: DigitsClassifier | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> DigitsQuality:
    """Digits FD, confidence and class score of ``samples``, each next to a real baseline of the same size.

    Real sets (from ``digits_arrays`` with the classifier recipe's split):

    * reference = the test split (180 images, never seen by the classifier), or a subset of
      ``n_reference`` ≤ 180 of it drawn with ``seed``;
    * real = ``len(samples)`` train-split images drawn without replacement with ``seed`` (disjoint from
      the reference; capped at the train split's 1,617 images, see ``n_real``).

    ``fd = FD(samples, reference)`` and ``fd_real_vs_real = FD(real, reference)``: the FD bias from finite
    sets is the same in both, so a generator matching the data has ``fd ≈ fd_real_vs_real``. The real
    set's confidence/class score are computed on ``real``. ``fd_real_mean`` ± ``fd_real_sd`` are over
    ``REAL_DRAWS`` more real sets of the same size (seeded by ``seed``): an FD of this many images varies that
    much from one set to the next, so single FDs closer than about 2 × ``fd_real_sd`` do not differ. The
    classifier was trained on the train split, but with ±1-pixel shifts and weight decay it barely overfits
    (mean confidence 0.988 on both train and test, accuracy 99.7% / 98.9%), so the train-drawn baseline is
    not noticeably optimistic.
    """
    recipe = ClassifierRecipe()
    model = _classifier(classifier, cache_dir)
    samples_t = to_digits_tensor(samples)
    _check_count(samples_t, "samples")
    rng = numpy_rng(seed, "digits-reference")
    test_x, test_y = digits_arrays("test", recipe.held_out_fraction, recipe.split_seed)
    train_x, _ = digits_arrays("train", recipe.held_out_fraction, recipe.split_seed)
    n_ref = len(test_x) if n_reference is None else int(n_reference)
    if not 2 <= n_ref <= len(test_x):
        raise ValueError(f"n_reference must be in [2, {len(test_x)}] (test split size), got {n_reference}")
    ref_idx = np.sort(rng.permutation(len(test_x))[:n_ref])
    n_real = min(samples_t.shape[0], len(train_x))
    real_idx = np.sort(rng.permutation(len(train_x))[:n_real])
    notes: tuple[str, ...] = ()
    if n_real < samples_t.shape[0]:
        notes = (f"real baseline capped at the {n_real} train images (samples: {samples_t.shape[0]})",)

    f_s, l_s = _features_and_logits(samples_t, model)
    f_test, l_test = _features_and_logits(test_x, model)
    f_ref = f_test[ref_idx]
    f_train, l_train = _features_and_logits(train_x, model)
    f_real, l_real = f_train[real_idx], l_train[real_idx]
    fd_draws = [_fd_of_features(f_train[numpy_rng(seed, "digits-reference", k).permutation(len(train_x))[:n_real]],
                                f_ref) for k in range(REAL_DRAWS)]  # draw k: stream (seed, digits-reference, k)
    score, score_real = _score_from_logits(l_s), _score_from_logits(l_real)
    return DigitsQuality(
        fd=_fd_of_features(f_s, f_ref),
        fd_real_vs_real=_fd_of_features(f_real, f_ref),
        fd_real_mean=float(np.mean(fd_draws)),
        fd_real_sd=float(np.std(fd_draws, ddof=1)),
        real_draws=REAL_DRAWS,
        confidence=score.confidence,
        confidence_real=score_real.confidence,
        class_score=score.class_score,
        class_score_real=score_real.class_score,
        class_histogram=score.class_histogram,
        class_histogram_real=score_real.class_histogram,
        n_samples=int(samples_t.shape[0]),
        n_reference=n_ref,
        n_real=n_real,
        seed=seed,
        classifier_accuracy=float((l_test.argmax(axis=1) == test_y).mean()),
        reference_set=f"digits test split ({n_ref} of {len(test_x)} images, seed {seed})",
        real_set=f"digits train split ({n_real} of {len(train_x)} images, seed {seed})",
        notes=notes,
    )
