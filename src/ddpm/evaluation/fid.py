"""FID and Inception Score through torchmetrics, with reference statistics that can be saved as .npz.

Feature extraction and accumulation are torchmetrics' (``FrechetInceptionDistance`` and
``InceptionScore``, each given an ``nn.Module`` extractor). The Fréchet distance itself is
:func:`ddpm.evaluation.frechet.frechet_distance` (float64, symmetric eigendecomposition route) applied
to the mean and covariance that torchmetrics accumulates (float64 sums, the same ``n − 1`` covariance as
``FrechetInceptionDistance.compute``), for both a reference dataset and a precomputed statistics file,
so the two paths give the same number; the tests check that it equals torchmetrics' own ``compute()``.

Extractors:

* ``feature_extractor=None`` (default): Inception-v3 with the TF-FID weights, as in pytorch-fid and
  torch-fidelity: 2048 pool features for FID, the 1008 "unbiased" logits for IS, one forward pass for
  both. Needs ``torch-fidelity`` (``pip install torch-fidelity``, the ``fid`` extra; it requires a
  torchvision matching your torch). torch-fidelity DOWNLOADS the weights file
  (``weights-inception-2015-12-05-6726825d.pth``, ~96 MB) on first use unless ``inception_weights``
  points at a local copy. Images are resized to 299×299 by the extractor; grey images are repeated to RGB.
* ``feature_extractor=<nn.Module>``: any module mapping a uint8 NCHW batch to features (N, d), e.g. for
  small images or offline tests; IS is then computed only if ``logits_extractor`` (uint8 batch →
  logits (N, K)) is also given, otherwise the IS fields are ``None``.

Images are uint8 NCHW in 0..255. Float tensors are taken to be in [-1, 1] (the project's convention) and
quantised as round((x + 1) · 127.5), like saving them to PNG. Nothing here downloads anything itself.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ddpm.evaluation.frechet import frechet_distance
from ddpm.outputs import write_npz
from ddpm.rng import seed_torch

__all__ = [
    "INCEPTION_WEIGHTS_FILE",
    "FeatureStatistics",
    "FidDependencyError",
    "FidResult",
    "StatisticsFileError",
    "compute_fid_is",
    "compute_statistics",
    "iter_uint8_batches",
    "load_npz_images",
    "load_statistics",
    "save_statistics",
    "to_uint8",
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
    """One array of an open .npz; object (pickled) arrays and damaged members raise naming the file."""
    try:
        return data[key]
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


def to_uint8(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 tensor: uint8 passes through, floats in [-1, 1] become round((x + 1) · 127.5), clamped."""
    x = torch.as_tensor(images) if isinstance(images, np.ndarray) else images
    if x.dtype == torch.uint8:
        return x
    if x.dtype.is_floating_point:
        return ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    raise ValueError(f"images must be uint8 (0..255) or float in [-1, 1], got dtype {x.dtype}")


def load_npz_images(path: PathLike) -> np.ndarray:
    """uint8 images (N, C, H, W) from an .npz (key 'images', 'arr_0' or its only array; NHWC or NCHW)."""
    where = f"image file {os.fspath(path)}"
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
        x = to_uint8(source)
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
        x = to_uint8(_item_image(item))
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


class _Memo(nn.Module):
    """Runs a module once per input batch object and returns the cached output for repeated calls."""

    def __init__(self, fn: nn.Module | Callable[[torch.Tensor], Any]) -> None:
        super().__init__()
        self.fn = fn
        self._last: tuple[torch.Tensor, Any] | None = None

    def forward(self, x: torch.Tensor) -> Any:
        """fn(x), computed once for the same tensor object."""
        if self._last is None or self._last[0] is not x:
            with torch.no_grad():
                self._last = (x, self.fn(x))
        return self._last[1]


class _Head(nn.Module):
    """One output of a shared (memoised) extractor, as a module with ``num_features`` for torchmetrics."""

    def __init__(self, shared: _Memo, index: int | None, num_features: int) -> None:
        super().__init__()
        self.shared = shared
        self.index = index
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features (N, num_features)."""
        out = self.shared(x)
        out = out if self.index is None else out[self.index]
        return out.reshape(x.shape[0], -1)


@dataclass
class _Extractors:
    """The FID feature head, the optional IS logits head, and the per-batch preparation."""

    features: _Head | None
    logits: _Head | None
    prepare: Callable[[torch.Tensor], torch.Tensor]
    name: str
    feature_module: nn.Module | None = None
    logits_module: nn.Module | None = None

    def ensure_heads(self, batch: torch.Tensor) -> None:
        """Create the custom heads on the first batch (their widths come from running it once)."""
        if self.features is not None or self.feature_module is None:
            return
        self.feature_module.to(batch.device)
        if self.logits_module is not None:
            self.logits_module.to(batch.device)
        shared = _Memo(self.feature_module)
        self.features = _Head(shared, None, int(shared(batch).reshape(batch.shape[0], -1).shape[1]))
        if self.logits_module is not None:
            shared_logits = _Memo(self.logits_module)
            width = int(shared_logits(batch).reshape(batch.shape[0], -1).shape[1])
            self.logits = _Head(shared_logits, None, width)


def _require_torchmetrics() -> Any:
    """Import torchmetrics' image metrics or explain what to install."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.inception import InceptionScore
    except ImportError as exc:
        raise FidDependencyError(
            "FID/IS need torchmetrics: `pip install torchmetrics` (it keeps your torch build)"
        ) from exc
    return FrechetInceptionDistance, InceptionScore


def _grey_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Repeat a single channel to three (Inception expects RGB)."""
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise ValueError(f"the Inception extractor needs 1 or 3 channels, got {x.shape[1]}")
    return x


def _default_inception(inception_weights: PathLike | None) -> _Extractors:
    """torch-fidelity's Inception-v3 (FID pool features + IS logits from one pass), or a clear error."""
    if inception_weights is not None and not os.path.isfile(inception_weights):
        raise FileNotFoundError(
            f"inception_weights file {os.fspath(inception_weights)} does not exist "
            f"(expected torch-fidelity's {INCEPTION_WEIGHTS_FILE})"
        )
    try:
        import torch_fidelity  # noqa: F401
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as exc:
        raise FidDependencyError(
            "the default Inception feature extractor needs torch-fidelity: `pip install torch-fidelity` "
            "(or the `fid` extra; it needs a torchvision matching your torch). It downloads "
            f"{INCEPTION_WEIGHTS_FILE} (~96 MB) on first use unless you pass "
            f"inception_weights='/path/to/{INCEPTION_WEIGHTS_FILE}'. Alternatively pass "
            "feature_extractor=<nn.Module> (and logits_extractor for IS)."
        ) from exc
    net = NoTrainInceptionV3(
        name="inception-v3-compat",
        features_list=["2048", "logits_unbiased"],
        feature_extractor_weights_path=None if inception_weights is None else os.fspath(inception_weights),
    )
    shared = _Memo(net._torch_fidelity_forward)
    shared.add_module("inception", net)
    name = "inception-v3 (torch-fidelity)"
    return _Extractors(_Head(shared, 0, 2048), _Head(shared, 1, 1008), _grey_to_rgb, name)


def _extractors(
    feature_extractor: nn.Module | None,
    logits_extractor: nn.Module | None,
    inception_weights: PathLike | None,
) -> _Extractors:
    """Default Inception heads, or custom modules whose heads are built on the first batch."""
    if feature_extractor is None:
        if logits_extractor is not None:
            raise ValueError("logits_extractor needs a feature_extractor (the default Inception has both)")
        return _default_inception(inception_weights)
    feature_extractor.eval()
    if logits_extractor is not None:
        logits_extractor.eval()
    name = type(feature_extractor).__name__
    return _Extractors(None, None, lambda x: x, name, feature_extractor, logits_extractor)


# ----------------------------------------------------------------------------------------------------------
# accumulation


def _statistics_from_metric(metric: nn.Module, real: bool) -> FeatureStatistics:
    """Mean and covariance (n − 1) from torchmetrics' FID float64 sums, as its ``compute`` forms them."""
    side = "real" if real else "fake"
    n = int(getattr(metric, f"{side}_features_num_samples"))
    total = getattr(metric, f"{side}_features_sum").detach().double().cpu().numpy()
    outer = getattr(metric, f"{side}_features_cov_sum").detach().double().cpu().numpy()
    if n < 2:
        raise ValueError(f"need at least 2 {'reference' if real else 'sample'} images, got {n}")
    mu = total / n
    sigma = (outer - n * np.outer(mu, mu)) / (n - 1)
    return FeatureStatistics(mu, 0.5 * (sigma + sigma.T), n)


@dataclass
class _Accumulator:
    """Lazily built torchmetrics FID/IS metrics fed from batches through the extractors."""

    extractors: _Extractors
    device: torch.device
    want_is: bool
    is_splits: int = 10
    fid: Any = None
    inception_score: Any = None

    def update(self, batch: torch.Tensor, real: bool) -> None:
        """Feed one uint8 batch to FID (real or fake side) and, for samples, to IS."""
        batch = self.extractors.prepare(batch.to(self.device))
        self.extractors.ensure_heads(batch)
        self._build()
        with torch.no_grad():
            self.fid.update(batch, real=real)
            if not real and self.inception_score is not None:
                self.inception_score.update(batch)

    def _build(self) -> None:
        """Construct the torchmetrics metrics on first use."""
        if self.fid is not None:
            return
        fid_cls, is_cls = _require_torchmetrics()
        self.fid = fid_cls(feature=self.extractors.features, normalize=False).to(self.device)
        if self.want_is and self.extractors.logits is not None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
                metric = is_cls(feature=self.extractors.logits, splits=self.is_splits, normalize=False)
            self.inception_score = metric.to(self.device)


def compute_statistics(
    source: ImageSource,
    feature_extractor: nn.Module | None = None,
    inception_weights: PathLike | None = None,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
) -> FeatureStatistics:
    """Feature mean/covariance of an image source (for :func:`save_statistics` and reuse as a reference)."""
    acc = _Accumulator(_extractors(feature_extractor, None, inception_weights), torch.device(device), False)
    for batch in iter_uint8_batches(source, batch_size):
        acc.update(batch, real=True)
    if acc.fid is None:
        raise ValueError("need at least 2 reference images, got 0")
    return _statistics_from_metric(acc.fid, real=True)


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
    extractors = _extractors(feature_extractor, logits_extractor, inception_weights)
    acc = _Accumulator(extractors, torch.device(device), True, is_splits)
    for batch in iter_uint8_batches(samples, batch_size):
        acc.update(batch, real=False)
    if acc.fid is None:
        raise ValueError("need at least 2 sample images, got 0")
    stats = _statistics_from_metric(acc.fid, real=False)
    if ref is not None:
        if ref.mu.shape != stats.mu.shape:
            raise StatisticsFileError(
                f"statistics file {os.fspath(reference)} has {ref.mu.shape[0]} features but the extractor "
                f"gives {stats.mu.shape[0]}"
            )
    else:
        for batch in iter_uint8_batches(reference, batch_size):
            acc.update(batch, real=True)
        ref = _statistics_from_metric(acc.fid, real=True)
    is_mean = is_std = None
    if acc.inception_score is not None:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*degrees of freedom.*")  # std of a single split
            seed_torch(seed, "inception-score")  # torchmetrics permutes the splits with the global RNG
            mean, std = acc.inception_score.compute()
        is_mean = float(mean)
        is_std = float(std) if torch.isfinite(std) else None
    return FidResult(
        fid=frechet_distance(stats.mu, stats.sigma, ref.mu, ref.sigma),
        inception_score_mean=is_mean,
        inception_score_std=is_std,
        n_samples=int(stats.n or 0),
        n_reference=ref.n,
        feature_dim=int(stats.mu.shape[0]),
        extractor=extractors.name,
    )
