"""FID and Inception Score from our own float64 accumulation, with reference statistics that can be saved as .npz.

Per batch the extractor gives pool features (and, for IS, logits); :class:`FeatureMoments` accumulates
n, Σx and Σxxᵀ in float64 → the mean and the unbiased (n − 1) covariance, and :func:`inception_score` forms
exp E_x KL(p(y|x) ‖ p(y)) over shuffled splits of the logits, with the split rule of torchmetrics'
``InceptionScore`` (``torch.chunk``: splits of ⌈N/splits⌉, mean and unbiased std over them). The Fréchet
distance is :func:`ddpm.evaluation.frechet.frechet_distance` (float64, symmetric eigendecomposition route),
for both a reference dataset and a precomputed statistics file, so the two paths give the same number.

Extractors:

* ``feature_extractor=None`` (default): Inception-v3 with the TF-FID weights, as in pytorch-fid and
  torch-fidelity (torchmetrics' ``NoTrainInceptionV3``): 2048 pool features for FID, the 1008 "unbiased"
  logits for IS, one forward pass for both. Needs torchmetrics and ``torch-fidelity`` (the ``fid`` extra; it
  requires a torchvision matching your torch). torch-fidelity DOWNLOADS the weights file
  (``weights-inception-2015-12-05-6726825d.pth``, ~96 MB) on first use unless ``inception_weights``
  points at a local copy. Images are resized to 299×299 by the extractor with TensorFlow 1.x's bilinear rule, as
  TF-FID does (not torchmetrics' default antialiased resize); grey images are repeated to RGB.
* ``feature_extractor=<nn.Module>``: any module mapping a uint8 NCHW batch to features (N, d), e.g. for
  small images or offline tests; IS is then computed only if ``logits_extractor`` (uint8 batch →
  logits (N, K)) is also given, otherwise the IS fields are ``None``.

Images are uint8 NCHW in 0..255. Float tensors are taken to be in [-1, 1] (the project's convention) and
quantised to 256 levels (``ddpm.data.levels.to_levels``), like saving them to PNG. Nothing here downloads
anything itself.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ddpm.data.errors import DataError
from ddpm.data.levels import to_levels
from ddpm.data.npz import read_member
from ddpm.evaluation.frechet import frechet_distance
from ddpm.outputs import write_npz
from ddpm.rng import generator

__all__ = [
    "INCEPTION_WEIGHTS_FILE",
    "FeatureMoments",
    "FeatureStatistics",
    "FidDependencyError",
    "FidResult",
    "StatisticsFileError",
    "compute_fid_is",
    "compute_statistics",
    "inception_score",
    "iter_uint8_batches",
    "load_npz_images",
    "load_statistics",
    "save_statistics",
]

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
PathLike = str | os.PathLike
ImageSource = PathLike | torch.Tensor | np.ndarray | Iterable[Any]


class StatisticsFileError(ValueError):
    """A reference statistics file is unreadable or malformed."""


class FidDependencyError(ImportError):
    """An optional dependency of the FID/IS pipeline (torchmetrics, torch-fidelity) is missing."""


class FeatureStatistics(NamedTuple):
    """Mean (d,), covariance (d, d) (float64) and the number of images (None if unknown)."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None = None


@dataclass(frozen=True)
class FidResult:
    """FID (and IS when a logits extractor is available) of a sample set."""

    fid: float
    inception_score_mean: float | None
    inception_score_std: float | None
    n_samples: int
    n_reference: int | None  # None when a statistics file did not record it
    feature_dim: int
    extractor: str

    def as_dict(self) -> dict:
        """Plain dict (JSON-serialisable)."""
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------
# statistics files


def _validate_statistics(mu: Any, sigma: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes (d,) and (d, d) and finiteness; return float64 arrays."""
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or mu.shape[0] == 0:
        raise StatisticsFileError(f"{where}: mu must have shape (d,), got {mu.shape}")
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise StatisticsFileError(f"{where}: sigma must have shape ({d}, {d}) to match mu, got {sigma.shape}")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise StatisticsFileError(f"{where}: mu/sigma contain non-finite values")
    return mu, sigma


def save_statistics(path: PathLike, mu: np.ndarray, sigma: np.ndarray, n: int | None = None) -> None:
    """Write mu (d,) and sigma (d, d) as float64 (and n if given) to an .npz file at exactly ``path``."""
    mu, sigma = _validate_statistics(mu, sigma, f"statistics for {os.fspath(path)}")
    arrays = {"mu": mu, "sigma": sigma}
    if n is not None:
        arrays["n"] = np.asarray(int(n), dtype=np.int64)
    write_npz(path, **arrays)


def _open_npz(path: PathLike, where: str, expected: str) -> np.lib.npyio.NpzFile:
    """np.load(path, allow_pickle=False) that must give an .npz archive; errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # not a numpy file, bad zip, truncated, ...
        raise StatisticsFileError(f"{where} cannot be read as an .npz archive ({expected}): {exc}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise StatisticsFileError(f"{where} is a single .npy array, expected an .npz archive ({expected})")
    return data


def _read_array(data: np.lib.npyio.NpzFile, key: str, where: str) -> np.ndarray:
    """One array of an open .npz, its header and sizes checked before its data is read (the dataset loader's
    ``read_member``: no pickles, no decompression bomb); damaged members raise naming the file."""
    try:
        return read_member(data, key, Path(data.zip.filename))
    except DataError as exc:
        raise StatisticsFileError(f"{where}: {exc}") from exc
    except Exception as exc:
        raise StatisticsFileError(f"{where}: array {key!r} cannot be read without pickle: {exc}") from exc


def load_statistics(path: PathLike) -> FeatureStatistics:
    """Read (mu, sigma[, n]) from an .npz written by :func:`save_statistics` (or pytorch-fid); no pickles."""
    where = f"statistics file {os.fspath(path)}"
    expected = "arrays 'mu' (d,) and 'sigma' (d, d)"
    with _open_npz(path, where, expected) as data:
        missing = {"mu", "sigma"} - set(data.files)
        if missing:
            raise StatisticsFileError(
                f"{where}: missing {sorted(missing)}; found {sorted(data.files)}, expected {expected} "
                "(to use an .npz of images as the reference, pass load_npz_images(path))"
            )
        mu, sigma = _read_array(data, "mu", where), _read_array(data, "sigma", where)
        n = _read_array(data, "n", where) if "n" in data.files else None
    mu, sigma = _validate_statistics(mu, sigma, where)
    if n is not None and (n.shape != () or not np.issubdtype(n.dtype, np.integer) or int(n) < 2):
        raise StatisticsFileError(f"{where}: 'n' must be an integer scalar >= 2, got {n!r}")
    return FeatureStatistics(mu, sigma, None if n is None else int(n))


# ----------------------------------------------------------------------------------------------------------
# image inputs


def _as_uint8(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 images pass through; floats in [-1, 1] become 8-bit levels (clamped), as a PNG stores them."""
    x = torch.as_tensor(images) if isinstance(images, np.ndarray) else images
    if x.dtype == torch.uint8:
        return x
    if x.dtype.is_floating_point:
        return to_levels(x, 256)
    raise ValueError(f"images must be uint8 (0..255) or float in [-1, 1], got dtype {x.dtype}")


def load_npz_images(path: PathLike, option: str | None = None) -> np.ndarray:
    """uint8 images (N, C, H, W) from an .npz (key 'images', 'arr_0' or its only array; NHWC or NCHW).

    ``option`` (e.g. ``"--samples"``) is how errors name the file: the command-line option that gave it.
    """
    where = f"{option or 'image file'} {os.fspath(path)}"
    with _open_npz(path, where, "uint8 images under 'images' or 'arr_0'") as data:
        keys = list(data.files)
        key = next((k for k in ("images", "arr_0") if k in keys), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise ValueError(f"{where}: expected an array 'images' or 'arr_0', found {keys}")
        images = _read_array(data, key, where)
    if images.dtype != np.uint8:
        raise ValueError(f"{where}: images must be uint8 0..255, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise ValueError(f"{where}: images must be (N, H, W), (N, H, W, C) or (N, C, H, W): {images.shape}")
    if images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(images)


def _chunks(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive slices of at most ``batch_size`` along dim 0."""
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size]


def _item_image(item: Any) -> torch.Tensor:
    """The image part of a dataset item (a tensor/array, or the first element of a tuple/list)."""
    if isinstance(item, (tuple, list)):
        item = item[0]
    if isinstance(item, np.ndarray):
        item = torch.from_numpy(item)
    if not isinstance(item, torch.Tensor):
        raise ValueError(f"expected image tensors/arrays or (image, label) items, got {type(item).__name__}")
    return item


def iter_uint8_batches(source: ImageSource, batch_size: int = 50) -> Iterator[torch.Tensor]:
    """uint8 NCHW batches from a path (.npz of images), an (N,C,H,W) array/tensor, or an iterable/dataset.

    Iterable items may be batches (N, C, H, W) (used as they are) or single images (C, H, W), also as the
    first element of a tuple (image, label); single images are collected into batches of ``batch_size``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(source, (str, os.PathLike)):
        source = load_npz_images(source)
    if isinstance(source, (np.ndarray, torch.Tensor)):
        x = _as_uint8(source)
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W) or (N, H, W), got {tuple(x.shape)}")
        yield from _chunks(x, batch_size)
        return
    if isinstance(source, Dataset) and hasattr(source, "__len__"):
        dataset = source
        source = (dataset[i] for i in range(len(dataset)))  # type: ignore[arg-type]
    pending: list[torch.Tensor] = []
    for item in source:
        x = _as_uint8(_item_image(item))
        if x.ndim == 4:
            if pending:
                yield torch.stack(pending)
                pending = []
            yield x
        elif x.ndim == 3:
            pending.append(x)
            if len(pending) == batch_size:
                yield torch.stack(pending)
                pending = []
        else:
            raise ValueError(f"expected a batch (N, C, H, W) or an image (C, H, W), got {tuple(x.shape)}")
    if pending:
        yield torch.stack(pending)


# ----------------------------------------------------------------------------------------------------------
# extractors


@dataclass(frozen=True)
class _Extractor:
    """Pool features (N, d) and, when it has a logits head, IS logits (N, K) of a uint8 NCHW batch."""

    name: str
    run: Callable[[torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor | None]]  # (batch, want logits)
    has_logits: bool
    device: torch.device

    def __call__(self, batch: torch.Tensor, want_logits: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(features (N, d), logits (N, K) or None) of one batch, moved to the extractor's device."""
        with torch.no_grad():
            features, logits = self.run(batch.to(self.device), want_logits)
        n = batch.shape[0]
        return features.reshape(n, -1), None if logits is None else logits.reshape(n, -1)


def _grey_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Repeat a single channel to three (Inception expects RGB)."""
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise ValueError(f"the Inception extractor needs 1 or 3 channels, got {x.shape[1]}")
    return x


def check_inception(inception_weights: PathLike | None) -> None:
    """Raise the error ``_default_inception`` would (a missing weights file or package), without building it:
    cheap, so a command can say so before it reads a reference dataset."""
    if inception_weights is not None and not os.path.isfile(inception_weights):
        raise FileNotFoundError(
            f"the Inception weights file {os.fspath(inception_weights)} (--inception-weights) does not exist "
            f"(expected torch-fidelity's {INCEPTION_WEIGHTS_FILE})"
        )
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3  # noqa: F401
    except ImportError as exc:
        raise FidDependencyError(
            "the default Inception feature extractor needs torchmetrics: `pip install torchmetrics` (it keeps your "
            "torch build), or pass feature_extractor=<nn.Module>"
        ) from exc
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as exc:
        raise FidDependencyError(
            "the default Inception feature extractor needs torch-fidelity: `pip install torch-fidelity` "
            "(or the `fid` extra; it needs a torchvision matching your torch). It downloads "
            f"{INCEPTION_WEIGHTS_FILE} (~96 MB) on first use unless you pass that file (--inception-weights FILE; "
            f"inception_weights='/path/to/{INCEPTION_WEIGHTS_FILE}' in Python). Alternatively pass "
            "feature_extractor=<nn.Module> (and logits_extractor for IS)."
        ) from exc


def _default_inception(inception_weights: PathLike | None, device: torch.device) -> _Extractor:
    """torchmetrics' Inception-v3 of torch-fidelity (FID pool features + IS logits from one pass), or a clear error."""
    check_inception(inception_weights)
    from torchmetrics.image.fid import NoTrainInceptionV3
    # the resize to 299×299 of TF-FID (and pytorch-fid, torch-fidelity): TensorFlow 1.x's bilinear rule; torchmetrics
    # >= 1.3 defaults to torch's antialiased one, whose sampling grid is shifted by about half a pixel (older
    # versions have no choice and use TensorFlow's)
    tf_resize = {"antialias": False} if "antialias" in inspect.signature(NoTrainInceptionV3).parameters else {}
    net = NoTrainInceptionV3(
        name="inception-v3-compat",
        features_list=["2048", "logits_unbiased"],
        feature_extractor_weights_path=None if inception_weights is None else os.fspath(inception_weights),
        **tf_resize,
    ).to(device)

    def run(x: torch.Tensor, want_logits: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        pool, logits = net._torch_fidelity_forward(_grey_to_rgb(x))  # one pass gives both heads
        return pool, logits if want_logits else None

    return _Extractor("inception-v3 (torch-fidelity)", run, True, device)


def _extractor(
    feature_extractor: nn.Module | None,
    logits_extractor: nn.Module | None,
    inception_weights: PathLike | None,
    device: torch.device,
) -> _Extractor:
    """The default Inception, or the given feature (and logits) modules, on ``device`` in eval mode."""
    if feature_extractor is None:
        if logits_extractor is not None:
            raise ValueError("logits_extractor needs a feature_extractor (the default Inception has both)")
        return _default_inception(inception_weights, device)
    features = feature_extractor.to(device).eval()
    logits = None if logits_extractor is None else logits_extractor.to(device).eval()

    def run(x: torch.Tensor, want_logits: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        return features(x), logits(x) if want_logits and logits is not None else None

    return _Extractor(type(feature_extractor).__name__, run, logits is not None, device)


# ----------------------------------------------------------------------------------------------------------
# accumulation


class FeatureMoments:
    """n, Σx and Σxxᵀ of feature vectors in float64, added batch by batch: their mean and unbiased covariance."""

    def __init__(self) -> None:
        self.n = 0
        self.total: torch.Tensor | None = None  # Σx, (d,)
        self.outer: torch.Tensor | None = None  # Σxxᵀ, (d, d)

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of feature vectors (N, d)."""
        if features.ndim != 2:
            raise ValueError(f"features must have shape (N, d), got {tuple(features.shape)}")
        x = features.detach()
        x = (x.cpu() if x.device.type == "mps" else x).double()  # MPS has no float64
        if self.total is None or self.outer is None:
            self.total, self.outer = x.new_zeros(x.shape[1]), x.new_zeros(x.shape[1], x.shape[1])
        elif x.shape[1] != self.total.shape[0]:
            raise ValueError(f"features of width {x.shape[1]} after features of width {self.total.shape[0]}")
        self.n += x.shape[0]
        self.total += x.sum(dim=0)
        self.outer += x.T @ x

    def statistics(self, what: str = "feature vectors") -> FeatureStatistics:
        """μ = Σx / n and Σ = (Σxxᵀ − n μμᵀ) / (n − 1), float64 (``what`` names the inputs in the error)."""
        if self.n < 2 or self.total is None or self.outer is None:
            raise ValueError(f"need at least 2 {what}, got {self.n}")
        mu = self.total.cpu().numpy() / self.n
        sigma = (self.outer.cpu().numpy() - self.n * np.outer(mu, mu)) / (self.n - 1)
        return FeatureStatistics(mu, 0.5 * (sigma + sigma.T), self.n)


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float | None]:
    """IS = exp E_x KL(p(y|x) ‖ p(y)) on splits of the logits (N, K) shuffled with ``seed``: mean and std over splits.

    The splits are torchmetrics' (``torch.chunk``: ⌈N/splits⌉ each, the last shorter, so fewer than ``splits``
    when N is small), p(y) is the mean of p(y|x) within a split, and the std is unbiased (None for one split).
    """
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must have shape (N, K) with N >= 1, got {tuple(logits.shape)}")
    order = torch.randperm(logits.shape[0], generator=generator(seed, "inception-score"))
    log_p = logits.detach().cpu().double()[order].log_softmax(dim=1)  # log p(y|x)
    scores = []
    for part in log_p.chunk(splits):
        log_marginal = part.exp().mean(dim=0).log()  # log p(y) of this split
        kl = (part.exp() * (part - log_marginal)).sum(dim=1)  # KL(p(y|x) ‖ p(y)) per image
        scores.append(kl.mean().exp())
    s = torch.stack(scores)
    return float(s.mean()), float(s.std()) if len(scores) > 1 else None


def _accumulate(source: ImageSource, extractor: _Extractor, batch_size: int,
                logits: list[torch.Tensor] | None = None) -> FeatureMoments:
    """Feature moments of an image source; each batch's IS logits appended (on the CPU) to ``logits`` if given."""
    moments = FeatureMoments()
    for batch in iter_uint8_batches(source, batch_size):
        features, batch_logits = extractor(batch, logits is not None)
        moments.update(features)
        if logits is not None and batch_logits is not None:
            logits.append(batch_logits.cpu())
    return moments


def compute_statistics(
    source: ImageSource,
    feature_extractor: nn.Module | None = None,
    inception_weights: PathLike | None = None,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
) -> FeatureStatistics:
    """Feature mean/covariance of an image source (for :func:`save_statistics` and reuse as a reference)."""
    extractor = _extractor(feature_extractor, None, inception_weights, torch.device(device))
    return _accumulate(source, extractor, batch_size).statistics("reference images")


def compute_fid_is(
    samples: ImageSource,
    reference: ImageSource,
    feature_extractor: nn.Module | None = None,
    inception_weights: PathLike | None = None,
    batch_size: int = 50,
    logits_extractor: nn.Module | None = None,
    is_splits: int = 10,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> FidResult:
    """FID of ``samples`` against ``reference`` (images or a statistics .npz path) and the IS of ``samples``.

    ``samples``: uint8 NCHW batches (iterable), an array/tensor, or an .npz path of images.
    ``reference``: the same kinds of image source, or a path to a statistics .npz (mu, sigma) written
    by :func:`save_statistics`. With ``feature_extractor=None`` torch-fidelity's Inception is used and
    may download its weights on first use unless ``inception_weights`` names a local file.
    IS is the mean (± std, ``None`` for a single split) over ``is_splits`` splits shuffled with ``seed``.
    """
    if is_splits < 1:
        raise ValueError(f"is_splits must be >= 1, got {is_splits}")
    ref_file = isinstance(reference, (str, os.PathLike))
    ref = load_statistics(reference) if ref_file else None  # a bad file fails before any extraction
    extractor = _extractor(feature_extractor, logits_extractor, inception_weights, torch.device(device))
    logits: list[torch.Tensor] | None = [] if extractor.has_logits else None  # IS sees the samples only
    stats = _accumulate(samples, extractor, batch_size, logits).statistics("sample images")
    if ref is None:
        ref = _accumulate(reference, extractor, batch_size).statistics("reference images")
    elif ref.mu.shape != stats.mu.shape:
        raise StatisticsFileError(
            f"statistics file {os.fspath(reference)} has {ref.mu.shape[0]} features but the extractor "
            f"gives {stats.mu.shape[0]}"
        )
    is_mean, is_std = inception_score(torch.cat(logits), is_splits, seed) if logits is not None else (None, None)
    return FidResult(
        fid=frechet_distance(stats.mu, stats.sigma, ref.mu, ref.sigma),
        inception_score_mean=is_mean,
        inception_score_std=is_std,
        n_samples=int(stats.n or 0),
        n_reference=ref.n,
        feature_dim=int(stats.mu.shape[0]),
        extractor=extractor.name,
    )
