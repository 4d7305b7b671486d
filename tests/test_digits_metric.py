"""Digits quality metric: deterministic cached classifier, accuracy, FD/confidence on real vs garbage."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ddpm.data.digits import digits_arrays
from ddpm.evaluation import digits_metric as dm

SHORT = dm.ClassifierRecipe(epochs=1)  # cheap recipe for cache mechanics


@pytest.fixture(autouse=True)
def _no_home_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Any call that falls back to the default cache directory writes under tmp, never the home dir."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache directory for the session (the default classifier is trained once into it)."""
    return tmp_path_factory.mktemp("ddpm-cache")


@pytest.fixture(scope="session")
def classifier(cache_dir: Path) -> dm.DigitsClassifier:
    """The default classifier, trained once and cached in ``cache_dir``."""
    return dm.load_digits_classifier(cache_dir)


@pytest.fixture(scope="module")
def real_train() -> np.ndarray:
    """Train-split digits (uint8 levels 0..16)."""
    return digits_arrays("train")[0]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Bitwise equality of two state dicts."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_is_deterministic_and_restores_global_state(classifier: dm.DigitsClassifier) -> None:
    threads, rng_state = torch.get_num_threads(), torch.get_rng_state()
    deterministic = torch.are_deterministic_algorithms_enabled()
    again = dm.train_digits_classifier()
    assert _same_weights(classifier, again)
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(classifier(x), again(x))
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_different_seed_gives_different_weights() -> None:
    a = dm.train_digits_classifier(SHORT)
    b = dm.train_digits_classifier(dm.ClassifierRecipe(epochs=1, seed=1))
    assert not _same_weights(a, b)


def test_high_test_accuracy(classifier: dm.DigitsClassifier) -> None:
    accuracy = dm.classifier_accuracy(classifier)
    assert accuracy >= 0.97, accuracy


def test_cache_round_trip(cache_dir: Path, classifier: dm.DigitsClassifier, monkeypatch) -> None:
    path = dm.classifier_cache_path(cache_dir, dm.ClassifierRecipe())
    assert path.exists() and path.suffix == ".safetensors"
    assert dm.ClassifierRecipe().key()[:16] in path.name
    assert dm.classifier_cache_path(cache_dir, SHORT) != path  # keyed by the recipe

    def fail(*args, **kwargs):
        raise AssertionError("should load from the cache, not retrain")

    monkeypatch.setattr(dm, "train_digits_classifier", fail)
    loaded = dm.load_digits_classifier(cache_dir)
    assert _same_weights(loaded, classifier)


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert dm.default_cache_dir() == tmp_path / "ddpm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dm.default_cache_dir() == tmp_path / "home" / ".cache" / "ddpm"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "pickle", "wrong_tensors", "wrong_key"])
def test_corrupt_cache_is_retrained(tmp_path: Path, damage: str) -> None:
    reference = dm.load_digits_classifier(tmp_path, SHORT)
    path = dm.classifier_cache_path(tmp_path, SHORT)
    if damage == "garbage":
        path.write_bytes(b"\x00\xff not a safetensors file" * 10)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "pickle":
        torch.save(reference.state_dict(), path)  # a pickle: must never be unpickled
    elif damage == "wrong_tensors":
        save_file({"conv1.weight": torch.zeros(2, 2)}, str(path), metadata={"key": SHORT.key()})
    else:
        state = {k: v.contiguous() for k, v in reference.state_dict().items()}
        save_file(state, str(path), metadata={"key": "0" * 64})
    with pytest.warns(RuntimeWarning, match="retraining"):
        retrained = dm.load_digits_classifier(tmp_path, SHORT)
    assert _same_weights(retrained, reference)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten cache loads cleanly
        assert _same_weights(dm.load_digits_classifier(tmp_path, SHORT), reference)


def test_cache_metadata_records_recipe(tmp_path: Path) -> None:
    from safetensors import safe_open

    dm.load_digits_classifier(tmp_path, SHORT)
    with safe_open(str(dm.classifier_cache_path(tmp_path, SHORT)), framework="pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata["recipe"])["epochs"] == 1
    assert metadata["key"] == SHORT.key()


def test_input_formats_agree(classifier: dm.DigitsClassifier, real_train: np.ndarray) -> None:
    levels = real_train[:50]
    floats = torch.from_numpy(levels).float().unsqueeze(1) * (2 / 16) - 1
    a = dm.digits_features(levels, classifier)
    b = dm.digits_features(floats, classifier)
    c = dm.digits_features(torch.from_numpy(levels.astype(np.int64)), classifier)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert a.shape == (50, 64) and a.dtype == np.float64
    # out-of-range floats are clamped to [-1, 1]
    clamped = dm.digits_features((floats * 3).clamp(-1, 1), classifier)
    np.testing.assert_array_equal(dm.digits_features(floats * 3, classifier), clamped)


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (np.full((4, 8, 8), 17, dtype=np.uint8), "levels 0..16"),
        (np.zeros((4, 3, 8, 8), dtype=np.float32), "shape"),
        (np.zeros((4, 1, 28, 28), dtype=np.float32), "shape"),
        (np.full((4, 1, 8, 8), np.nan, dtype=np.float32), "non-finite"),
    ],
)
def test_bad_images(images: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dm.to_digits_tensor(images)


def test_features_are_fast(classifier: dm.DigitsClassifier) -> None:
    x = torch.rand(2000, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    dm.digits_features(x[:10], classifier)  # warm-up
    start = time.perf_counter()
    dm.digits_features(x, classifier)
    assert time.perf_counter() - start < 2.0  # ~0.1 s on 2 cores; loose against a busy machine


def _garbage(kind: str, n: int, real: np.ndarray, seed: int = 0) -> torch.Tensor | np.ndarray:
    """Uniform noise in [-1, 1], all-black (background) images, or digits with shuffled pixels."""
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return torch.from_numpy(rng.uniform(-1, 1, size=(n, 1, 8, 8)).astype(np.float32))
    if kind == "black":
        return np.zeros((n, 8, 8), dtype=np.uint8)
    return np.stack([im.reshape(-1)[rng.permutation(64)].reshape(8, 8) for im in real[:n]])


@pytest.mark.parametrize("n", [256, 1000])
def test_real_vs_garbage(classifier: dm.DigitsClassifier, real_train: np.ndarray, n: int) -> None:
    real = real_train[np.random.default_rng(123).permutation(len(real_train))[:n]]
    q = dm.evaluate_digits(real, seed=7, classifier=classifier)
    assert q.n_samples == q.n_real == n and q.n_reference == 180
    assert q.fd_real_vs_real < 15.0
    assert q.fd < 2.0 * q.fd_real_vs_real  # real samples look like the baseline
    assert q.confidence > 0.95 and q.confidence_real > 0.95
    assert q.class_score > 8.0 and q.class_score_real > 8.0
    assert q.classifier_accuracy >= 0.97
    for kind in ("noise", "black", "shuffled"):
        g = dm.evaluate_digits(_garbage(kind, n, real), seed=7, classifier=classifier)
        assert g.fd_real_vs_real == pytest.approx(q.fd_real_vs_real)  # same seed → same baseline
        assert g.fd > 15.0 * q.fd_real_vs_real, (kind, g.fd, q.fd_real_vs_real)
        assert g.class_score < 4.0, (kind, g.class_score)
        if kind != "black":  # all-black images are confidently one class: caught by FD and class score
            assert g.confidence < q.confidence_real - 0.2, (kind, g.confidence)


def test_real_spread_predicts_how_much_a_real_sets_fd_varies(classifier: dm.DigitsClassifier,
                                                             real_train: np.ndarray) -> None:
    # 12 real sets of 256 drawn here, independently of the metric's own draws: their FDs should spread as the
    # metric's fd_real_mean ± fd_real_sd says a generator that matches the data would.
    rng = np.random.default_rng(2024)
    sets = [real_train[rng.permutation(len(real_train))[:256]] for _ in range(12)]
    qs = [dm.evaluate_digits(x, seed=3, classifier=classifier) for x in sets]
    q = qs[0]
    assert q.real_draws == dm.REAL_DRAWS and all(r.fd_real_sd == q.fd_real_sd for r in qs)  # depends on seed alone
    fds = np.array([r.fd for r in qs])
    assert 0.5 < fds.std(ddof=1) / q.fd_real_sd < 2.0, (fds, q.fd_real_mean, q.fd_real_sd)
    assert abs(fds.mean() - q.fd_real_mean) < 3 * q.fd_real_sd / np.sqrt(len(fds)) + 0.2 * q.fd_real_sd
    assert 0.5 < q.fd_real_sd < 0.5 * q.fd_real_mean  # 256 images: an FD of ~12 ± ~2
    larger = dm.evaluate_digits(real_train[:1000], seed=3, classifier=classifier)
    assert larger.fd_real_sd < q.fd_real_sd and larger.fd_real_mean < q.fd_real_mean  # less bias, less spread
    whole = dm.evaluate_digits(np.concatenate([real_train, real_train]), seed=3, classifier=classifier)
    assert whole.n_real == len(real_train) and whole.fd_real_sd < 1e-4  # every draw: the whole train split (reordered)
    assert whole.fd_real_mean == pytest.approx(whole.fd_real_vs_real)


def test_digits_frechet_distance_and_score(classifier: dm.DigitsClassifier, real_train: np.ndarray) -> None:
    test_x = digits_arrays("test")[0]
    fd_real = dm.digits_frechet_distance(real_train[:500], test_x, classifier)
    fd_noise = dm.digits_frechet_distance(_garbage("noise", 500, real_train), test_x, classifier)
    assert fd_noise > 15 * fd_real
    assert dm.digits_frechet_distance(test_x, test_x, classifier) == pytest.approx(0.0, abs=1e-6)
    score = dm.classifier_score(test_x, classifier)
    assert score.n == 180 and sum(score.class_histogram) == 180
    assert min(score.class_histogram) > 5  # every digit appears
    assert 1.0 <= score.class_score <= 10.0
    black = dm.classifier_score(_garbage("black", 100, real_train), classifier)
    assert black.class_score == pytest.approx(1.0) and max(black.class_histogram) == 100


def test_evaluate_digits_uses_the_cache_dir(cache_dir: Path, classifier: dm.DigitsClassifier) -> None:
    x = digits_arrays("train")[0][:64]
    a = dm.evaluate_digits(x, n_reference=100, seed=3, cache_dir=cache_dir)
    b = dm.evaluate_digits(x, n_reference=100, seed=3, classifier=classifier)
    assert a == b and a.n_reference == 100
    assert "100 of 180" in a.reference_set and "64 of 1617" in a.real_set
    assert json.dumps(a.as_dict())


def test_evaluate_digits_edge_cases(classifier: dm.DigitsClassifier) -> None:
    x = digits_arrays("all")[0]
    big = np.concatenate([x, x[:203]])  # 2,000 images: more than the train split
    q = dm.evaluate_digits(big, classifier=classifier)
    assert q.n_samples == 2000 and q.n_real == 1617 and q.notes
    with pytest.raises(ValueError, match="n_reference"):
        dm.evaluate_digits(x[:10], n_reference=181, classifier=classifier)
    with pytest.raises(ValueError, match="at least 2"):
        dm.evaluate_digits(x[:1], classifier=classifier)
