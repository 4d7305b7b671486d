"""FID/IS pipeline with stand-in extractors (nothing is downloaded): our float64 moments and IS, statistics files,
input formats."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ddpm.evaluation.fid import (
    FeatureMoments,
    FidDependencyError,
    FidResult,
    StatisticsFileError,
    compute_fid_is,
    compute_statistics,
    inception_score,
    iter_uint8_batches,
    load_npz_images,
    load_statistics,
    save_statistics,
)
from ddpm.evaluation.frechet import feature_statistics, frechet_distance
from ddpm.rng import generator, seed_torch

needs_torchmetrics = pytest.mark.skipif(
    importlib.util.find_spec("torchmetrics") is None, reason="torchmetrics is not installed"
)
SHAPE = (1, 8, 8)
D = 16


class LinearFeatures(nn.Module):
    """Deterministic linear stand-in: pixels (0..255) @ W, float64 features (N, 16)."""

    def __init__(self, in_dim: int = 64, d: int = D) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("weight", torch.randn(in_dim, d, generator=g, dtype=torch.float64) / in_dim)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a uint8 batch."""
        assert x.dtype == torch.uint8
        self.calls += 1
        return x.flatten(1).double() @ self.weight


class TanhFeatures(LinearFeatures):
    """Non-linear float32 stand-in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a uint8 batch."""
        return torch.tanh(super().forward(x) / 50).float()


class Logits(LinearFeatures):
    """Stand-in classifier: 10 logits."""

    def __init__(self) -> None:
        super().__init__(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a uint8 batch."""
        return super().forward(x).float() / 4


def _images(n: int, seed: int, low: int = 0, high: int = 200) -> torch.Tensor:
    """Random uint8 images (n, 1, 8, 8) in [low, high)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, *SHAPE), generator=g, dtype=torch.uint8)


def _features(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Features computed directly, float64."""
    with torch.no_grad():
        return module(x).double().numpy()


def _closed_form_fd(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Our Fréchet distance between Gaussians fitted to features computed directly with numpy."""
    stats_x, stats_y = feature_statistics(_features(module, x)), feature_statistics(_features(module, y))
    return frechet_distance(*stats_x, *stats_y)


def test_fid_of_a_set_against_itself_is_zero() -> None:
    x = _images(300, 0)
    result = compute_fid_is(x, x, feature_extractor=TanhFeatures())
    assert isinstance(result, FidResult)
    assert result.fid == pytest.approx(0.0, abs=1e-9)
    assert (result.n_samples, result.n_reference, result.feature_dim) == (300, 300, D)
    assert result.inception_score_mean is None and result.inception_score_std is None
    assert result.extractor == "TanhFeatures"


def test_fid_of_a_shifted_set_equals_the_closed_form() -> None:
    x = _images(300, 1)
    shift = 20
    module = LinearFeatures()
    result = compute_fid_is(x + shift, x, feature_extractor=module)
    # linear features: same covariance, means differ by shift · 1ᵀW
    expected = float(((shift * module.weight.sum(0)) ** 2).sum())
    assert result.fid > 0
    assert result.fid == pytest.approx(expected, rel=1e-8)


def test_fid_equals_frechet_distance_of_the_features() -> None:
    module = TanhFeatures()
    x, y = _images(400, 2), _images(250, 3, 30, 255)
    result = compute_fid_is(x, y, feature_extractor=module, batch_size=64)
    expected = _closed_form_fd(module, x, y)
    assert result.fid == pytest.approx(expected, rel=1e-6)
    assert (result.n_samples, result.n_reference) == (400, 250)


@needs_torchmetrics
def test_torchmetrics_fid_equals_our_frechet_distance() -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    module = LinearFeatures()
    module.num_features = D
    x, y = _images(500, 4), _images(300, 5, 50, 255)
    metric = FrechetInceptionDistance(feature=module)
    metric.update(y, real=True)
    metric.update(x, real=False)
    theirs = float(metric.compute())
    ours = _closed_form_fd(module, x, y)
    assert theirs == pytest.approx(ours, rel=1e-7)
    assert compute_fid_is(x, y, feature_extractor=LinearFeatures()).fid == pytest.approx(theirs, rel=1e-7)


def test_precomputed_statistics_equal_the_dataset_path(tmp_path: Path) -> None:
    module = TanhFeatures()
    x, y = _images(200, 6), _images(300, 7, 10, 240)
    stats = compute_statistics(y, feature_extractor=module, batch_size=32)
    assert stats.n == 300 and stats.mu.shape == (D,) and stats.sigma.shape == (D, D)
    mu, sigma = feature_statistics(_features(module, y))
    np.testing.assert_allclose(stats.mu, mu, rtol=1e-6)
    np.testing.assert_allclose(stats.sigma, sigma, rtol=1e-5, atol=1e-9)
    path = tmp_path / "ref_stats.npz"
    save_statistics(path, stats.mu, stats.sigma, n=stats.n)
    from_file = compute_fid_is(x, path, feature_extractor=module, batch_size=32)
    from_data = compute_fid_is(x, y, feature_extractor=module, batch_size=32)
    assert from_file.fid == pytest.approx(from_data.fid, rel=1e-12)
    assert from_file.n_reference == 300


def test_each_batch_is_extracted_once() -> None:
    features, logits = LinearFeatures(), Logits()
    compute_fid_is(_images(100, 8), _images(60, 9), features, batch_size=25, logits_extractor=logits)
    assert features.calls == 4 + 3  # once per batch of samples and of reference images
    assert logits.calls == 4  # IS sees the samples only


def test_inception_score_with_a_logits_module() -> None:
    x = _images(400, 10)
    logits = Logits()
    result = compute_fid_is(x, x, LinearFeatures(), logits_extractor=logits, is_splits=1)
    p = torch.softmax(logits(x).double(), dim=1)
    kl = (p * (p.log() - p.mean(0, keepdim=True).log())).sum(1)
    assert result.inception_score_mean == pytest.approx(float(kl.mean().exp()), rel=1e-5)
    assert result.inception_score_std is None  # undefined for a single split
    split = compute_fid_is(x, x, LinearFeatures(), logits_extractor=Logits(), is_splits=4, seed=3)
    again = compute_fid_is(x, x, LinearFeatures(), logits_extractor=Logits(), is_splits=4, seed=3)
    assert split.inception_score_mean == again.inception_score_mean  # the split shuffle is seeded
    assert 1.0 <= split.inception_score_mean <= 10.0 and split.inception_score_std >= 0.0


@pytest.mark.parametrize("layout", ["nhwc_arr_0", "nchw_images", "nhw"])
def test_npz_sample_input(tmp_path: Path, layout: str) -> None:
    x, y = _images(120, 11), _images(100, 12)
    path = tmp_path / "samples.npz"
    if layout == "nhwc_arr_0":
        np.savez(path, x.permute(0, 2, 3, 1).numpy())
    elif layout == "nchw_images":
        np.savez(path, images=x.numpy(), labels=np.zeros(120))
    else:
        np.savez(path, x[:, 0].numpy())
    np.testing.assert_array_equal(load_npz_images(path), x.numpy())
    module = TanhFeatures()
    assert compute_fid_is(path, y, module).fid == pytest.approx(compute_fid_is(x, y, module).fid, rel=1e-9)


def test_input_kinds_agree() -> None:
    module = TanhFeatures()
    x, y = _images(90, 13), _images(70, 14)
    base = compute_fid_is(x, y, module).fid
    batches = [x[i : i + 16] for i in range(0, 90, 16)]
    dataset = torch.utils.data.TensorDataset(y, torch.zeros(70))
    floats = y.float() / 127.5 - 1.0  # [-1, 1] floats are quantised back to the same uint8
    assert compute_fid_is(iter(batches), dataset, module).fid == pytest.approx(base, rel=1e-9)
    assert compute_fid_is(x.numpy(), floats, module).fid == pytest.approx(base, rel=1e-9)
    assert compute_fid_is(x, [img for img in y], module, batch_size=7).fid == pytest.approx(base, rel=1e-9)


def test_float_images_and_batches() -> None:
    floats = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 2, 2)  # 8-bit levels as a PNG stores them, clamped
    assert next(iter_uint8_batches(floats)).flatten().tolist() == [0, 128, 255, 255]
    with pytest.raises(ValueError, match="uint8"):
        list(iter_uint8_batches(torch.zeros(2, 1, 2, 2, dtype=torch.int64)))
    sizes = [b.shape[0] for b in iter_uint8_batches(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), 4)]
    assert sizes == [4, 4, 2]
    with pytest.raises(ValueError, match="batch_size"):
        list(iter_uint8_batches(torch.zeros(1, 1, 4, 4), 0))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        list(iter_uint8_batches([torch.zeros(4, 4, dtype=torch.uint8)]))


def test_too_few_images() -> None:
    with pytest.raises(ValueError, match="at least 2 sample"):
        compute_fid_is(_images(1, 0), _images(10, 1), LinearFeatures())
    with pytest.raises(ValueError, match="at least 2 reference"):
        compute_fid_is(_images(10, 0), _images(1, 1), LinearFeatures())


def test_statistics_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    mu, sigma = rng.normal(size=5), a @ a.T
    path = tmp_path / "stats.npz"
    save_statistics(path, mu, sigma)
    stats = load_statistics(path)
    np.testing.assert_array_equal(stats.mu, mu)
    np.testing.assert_array_equal(stats.sigma, sigma)
    assert stats.n is None and stats.mu.dtype == np.float64
    save_statistics(path, mu.astype(np.float32), sigma, n=123)
    assert load_statistics(path).n == 123
    with pytest.raises(ValueError, match=r"\(5, 5\)"):
        save_statistics(path, mu, sigma[:4])


def _write_bad(path: Path, kind: str) -> None:
    """Write one kind of malformed statistics file."""
    if kind == "garbage":
        path.write_bytes(b"this is not a zip archive")
    elif kind == "npy":
        np.save(path.with_suffix(".npy"), np.zeros(3))
        path.with_suffix(".npy").rename(path)
    elif kind == "missing_sigma":
        np.savez(path, mu=np.zeros(3))
    elif kind == "wrong_shape":
        np.savez(path, mu=np.zeros(3), sigma=np.eye(4))
    elif kind == "nan":
        np.savez(path, mu=np.full(3, np.nan), sigma=np.eye(3))
    elif kind == "pickled":
        np.savez(path, mu=np.array([{"evil": 1}], dtype=object), sigma=np.eye(1))
    elif kind == "bad_n":
        np.savez(path, mu=np.zeros(3), sigma=np.eye(3), n=np.array([1, 2]))


BAD_KINDS = ["garbage", "npy", "missing_sigma", "wrong_shape", "nan", "pickled", "bad_n"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_statistics_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.npz"
    _write_bad(path, kind)
    with pytest.raises(StatisticsFileError) as info:
        load_statistics(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_statistics_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_statistics(tmp_path / "nope.npz")


def test_bad_statistics_file_fails_before_extraction(tmp_path: Path) -> None:
    path = tmp_path / "images.npz"
    np.savez(path, _images(10, 0).numpy())
    module = LinearFeatures()
    with pytest.raises(StatisticsFileError, match="load_npz_images"):
        compute_fid_is(_images(10, 0), path, module)
    assert module.calls == 0


def test_statistics_of_another_extractor_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "inception_like.npz"
    save_statistics(path, np.zeros(2048), np.eye(2048))
    with pytest.raises(StatisticsFileError, match="2048 features"):
        compute_fid_is(_images(10, 0), path, LinearFeatures())


def test_missing_inception_weights_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "weights.pth"
    with pytest.raises(FileNotFoundError, match="weights.pth"):
        compute_fid_is(_images(10, 0), _images(10, 1), inception_weights=missing)


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity installed")
def test_default_inception_without_torch_fidelity_explains(tmp_path: Path) -> None:
    with pytest.raises(FidDependencyError) as info:
        compute_fid_is(_images(10, 0), _images(10, 1))
    message = str(info.value)
    assert "pip install torch-fidelity" in message and "inception_weights" in message
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"")
    with pytest.raises(FidDependencyError):
        compute_fid_is(_images(10, 0), _images(10, 1), inception_weights=weights)


def test_only_the_default_extractor_needs_torchmetrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchmetrics.image.fid", None)
    with pytest.raises(FidDependencyError, match="pip install torchmetrics"):
        compute_fid_is(_images(10, 0), _images(10, 1))
    assert compute_fid_is(_images(10, 0), _images(10, 1), LinearFeatures()).fid > 0  # our own accumulation


def _uneven_batches(x: np.ndarray) -> list[np.ndarray]:
    """``x`` cut into batches of 1, 7, 64, 3, ... rows (the moments must not depend on the cut)."""
    cuts = np.cumsum([1, 7, 64, 3, 100, 2])
    return np.split(x, cuts[cuts < len(x)])


def test_feature_moments_equal_numpy_over_uneven_batches() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12)) * rng.uniform(0.1, 3, 12) + rng.normal(size=12)
    x[1:8] = x[1:8].astype(np.float32)  # that batch is given as float32 (as Inception gives it): exact in float64
    moments = FeatureMoments()
    for part in _uneven_batches(x):
        moments.update(torch.from_numpy(part).float() if len(part) == 7 else torch.from_numpy(part))
    stats = moments.statistics()
    assert stats.n == 300 and stats.mu.dtype == stats.sigma.dtype == np.float64
    np.testing.assert_allclose(stats.mu, x.mean(axis=0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False, ddof=1), rtol=0, atol=1e-10)
    mu, sigma = feature_statistics(x)  # FID from our moments is frechet.py's FID of the features
    other = rng.normal(size=(200, 12))
    assert frechet_distance(stats.mu, stats.sigma, *feature_statistics(other)) == pytest.approx(
        frechet_distance(mu, sigma, *feature_statistics(other)), rel=1e-10)


def test_feature_moments_refuse_too_few_and_mixed_widths() -> None:
    moments = FeatureMoments()
    with pytest.raises(ValueError, match="at least 2 sample images, got 0"):
        moments.statistics("sample images")
    moments.update(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="got 1"):
        moments.statistics()
    with pytest.raises(ValueError, match="width 4"):
        moments.update(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        moments.update(torch.zeros(3))


def _numpy_inception_score(logits: np.ndarray, splits: int, order: np.ndarray) -> tuple[float, float]:
    """IS written out in numpy: exp of the mean KL(p(y|x) ‖ p(y)) per split of ⌈N/splits⌉ shuffled rows."""
    z = logits[order] - logits.max(axis=1, keepdims=True)[order]
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    size = -(-len(p) // splits)
    scores = []
    for start in range(0, len(p), size):
        q = p[start:start + size]
        scores.append(np.exp(np.mean(np.sum(q * (np.log(q) - np.log(q.mean(axis=0))), axis=1))))
    return float(np.mean(scores)), float(np.std(scores, ddof=1))


@pytest.mark.parametrize(("n", "splits"), [(400, 10), (103, 4), (10, 4)])
def test_inception_score_equals_a_direct_numpy_computation(n: int, splits: int) -> None:
    logits = torch.randn(n, 10, generator=torch.Generator().manual_seed(n), dtype=torch.float64) * 3
    order = torch.randperm(n, generator=generator(5, "inception-score")).numpy()  # the seed rule (ddpm.rng)
    mean, std = inception_score(logits, splits, seed=5)
    want_mean, want_std = _numpy_inception_score(logits.numpy(), splits, order)
    assert mean == pytest.approx(want_mean, rel=1e-12) and std == pytest.approx(want_std, rel=1e-10)
    assert inception_score(logits, 1)[1] is None  # a single split has no spread
    with pytest.raises(ValueError, match="splits"):
        inception_score(logits, 0)


@needs_torchmetrics
@pytest.mark.parametrize(("n", "splits"), [(400, 10), (103, 4)])
def test_inception_score_equals_torchmetrics_on_the_same_logits(n: int, splits: int) -> None:
    import warnings

    from torchmetrics.image.inception import InceptionScore

    logits = torch.randn(n, 10, generator=torch.Generator().manual_seed(n), dtype=torch.float64) * 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "will save all extracted features"
        metric = InceptionScore(feature=nn.Identity(), splits=splits)  # it is fed the logits themselves
    metric.update(logits)
    with torch.random.fork_rng(devices=[]):
        seed_torch(3, "inception-score")  # torchmetrics shuffles with the global generator; ours with its own
        theirs = metric.compute()
    mean, std = inception_score(logits, splits, seed=3)
    assert mean == pytest.approx(float(theirs[0]), rel=1e-12) and std == pytest.approx(float(theirs[1]), rel=1e-10)


class _FakeInception(nn.Module):
    """Stands in for torchmetrics' NoTrainInceptionV3 (no torch-fidelity, no weights): records its calls."""

    instances: list[_FakeInception] = []

    def __init__(self, name: str, features_list: list, feature_extractor_weights_path: str | None,
                 antialias: bool = True) -> None:  # torchmetrics' default: torch's antialiased resize
        super().__init__()
        self.args = (name, features_list, feature_extractor_weights_path, antialias)
        self.inputs: list[torch.Tensor] = []
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w_pool", torch.randn(3, 2048, generator=g))
        self.register_buffer("w_logits", torch.randn(3, 1008, generator=g))
        _FakeInception.instances.append(self)

    def _torch_fidelity_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pool features (N, 2048), logits (N, 1008)) from the per-channel means."""
        self.inputs.append(x)
        m = x.float().mean(dim=(2, 3)) / 255
        return m @ self.w_pool, m @ self.w_logits


@needs_torchmetrics
def test_default_inception_wiring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import types

    import torchmetrics.image.fid

    import ddpm.evaluation.fid as fid_module

    shapes = []

    def spy(mu1, sigma1, mu2, sigma2):  # a 2048-dim eigendecomposition is seconds; not what this checks
        shapes.append((mu1.shape, sigma1.shape, mu2.shape, sigma2.shape))
        return float(np.sum((mu1 - mu2) ** 2))

    monkeypatch.setattr(fid_module, "frechet_distance", spy)
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    monkeypatch.setattr(torchmetrics.image.fid, "NoTrainInceptionV3", _FakeInception)
    _FakeInception.instances.clear()
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"")
    result = compute_fid_is(_images(40, 0), _images(30, 1), inception_weights=weights, batch_size=20)
    (net,) = _FakeInception.instances
    # antialias=False: TensorFlow 1.x's bilinear resize to 299×299, as TF-FID and torch-fidelity resize
    assert net.args == ("inception-v3-compat", ["2048", "logits_unbiased"], str(weights), False)
    assert len(net.inputs) == 2 + 2  # one forward per batch serves both FID and IS
    assert all(x.shape[1] == 3 and x.dtype == torch.uint8 for x in net.inputs)  # grey repeated to RGB
    assert shapes == [((2048,), (2048, 2048), (2048,), (2048, 2048))]
    assert result.feature_dim == 2048 and result.extractor.startswith("inception-v3")
    assert result.fid > 0 and result.inception_score_mean is not None
    assert result.inception_score_mean >= 1.0


def test_an_npz_bomb_given_as_samples_is_refused_before_it_inflates(tmp_path):
    """`ddpm fid` reads sample files with the dataset loader's size checks (ddpm.data.npz.read_member)."""
    import math
    import zipfile

    from numpy.lib import format as npy_format

    shape = (1100, 256, 256)  # 72 MB of zeros deflated to ~70 kB
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z, z.open("images.npy", "w") as f:
        npy_format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
        f.write(bytes(math.prod(shape)))
    with pytest.raises(StatisticsFileError, match=r"image file .*bomb\.npz: .*member 'images\.npy'.*over 100:1"):
        load_npz_images(path)
