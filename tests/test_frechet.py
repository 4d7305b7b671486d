"""Fréchet distance: closed forms for Gaussians, an independent sqrtm route, symmetry, Monte Carlo."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpm.evaluation.frechet import feature_statistics, frechet_distance, trace_sqrt_product


def _random_spd(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    """A random symmetric PSD matrix of the given rank (full rank by default)."""
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d) + (0.0 if rank else 0.1) * np.eye(d)


def _fd_via_sqrtm(mu1, sigma1, mu2, sigma2) -> float:
    """Independent route: scipy's sqrtm of the non-symmetric product Σ1 Σ2 (as in pytorch-fid)."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def test_diagonal_closed_form() -> None:
    rng = np.random.default_rng(0)
    d = 7
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_commuting_covariances_closed_form() -> None:
    rng = np.random.default_rng(1)
    d = 6
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # shared eigenvectors: Σ1 Σ2 = Σ2 Σ1
    a, b = rng.uniform(0.05, 2.0, size=d), rng.uniform(0.05, 2.0, size=d)
    sigma1, sigma2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-10)


def test_non_commuting_matches_sqrtm_route() -> None:
    rng = np.random.default_rng(2)
    d = 12
    sigma1, sigma2 = _random_spd(rng, d), _random_spd(rng, d)
    assert not np.allclose(sigma1 @ sigma2, sigma2 @ sigma1)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    ours = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert ours == pytest.approx(_fd_via_sqrtm(mu1, sigma1, mu2, sigma2), rel=1e-9)
    # and against the eigenvalues of Σ2^{1/2} Σ1 Σ2^{1/2} (the other order), built with scipy
    root2 = np.real(scipy.linalg.sqrtm(sigma2))
    tr = np.sum(np.sqrt(np.linalg.eigvals(root2 @ sigma1 @ root2).real))
    assert trace_sqrt_product(sigma1, sigma2) == pytest.approx(tr, rel=1e-10)


def test_one_dimensional() -> None:
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[1.0]])) == (
        pytest.approx(4.0 + 1.0)
    )


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 10), st.integers(0, 2**32 - 1))
def test_symmetric_and_zero_on_identical(d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    sigma1, sigma2 = _random_spd(rng, d), _random_spd(rng, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    forward = frechet_distance(mu1, sigma1, mu2, sigma2)
    backward = frechet_distance(mu2, sigma2, mu1, sigma1)
    assert forward == pytest.approx(backward, rel=1e-9, abs=1e-10)
    assert forward >= 0.0
    assert frechet_distance(mu1, sigma1, mu1, sigma1) == pytest.approx(0.0, abs=1e-9 * np.trace(sigma1))


def test_singular_covariances_are_handled() -> None:
    rng = np.random.default_rng(3)
    d = 20
    sigma1, sigma2 = _random_spd(rng, d, rank=5), _random_spd(rng, d, rank=8)
    mu = np.zeros(d)
    value = frechet_distance(mu, sigma1, mu, sigma2)
    assert np.isfinite(value) and value > 0
    assert frechet_distance(mu, sigma1, mu, sigma1) == pytest.approx(0.0, abs=1e-8)
    # the eps offset converges to the exact answer (its bias is O(d·sqrt(eps)))
    assert frechet_distance(mu, sigma1, mu, sigma2, eps=1e-12) == pytest.approx(value, rel=1e-5)
    # features with fewer samples than dimensions: rank-deficient but fine
    f1, f2 = rng.normal(size=(10, d)), rng.normal(size=(10, d)) + 1.0
    value = frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
    assert np.isfinite(value) and value > d * 0.5


def test_monte_carlo_converges_to_exact() -> None:
    rng = np.random.default_rng(4)
    d = 4
    sigma1, sigma2 = _random_spd(rng, d), _random_spd(rng, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    exact = frechet_distance(mu1, sigma1, mu2, sigma2)
    errors = []
    for n in (1_000, 100_000):
        x = rng.multivariate_normal(mu1, sigma1, size=n)
        y = rng.multivariate_normal(mu2, sigma2, size=n)
        errors.append(abs(frechet_distance(*feature_statistics(x), *feature_statistics(y)) - exact))
    assert errors[1] < 0.02 * exact
    assert errors[1] < errors[0] or errors[0] < 0.01 * exact


def test_feature_statistics_matches_numpy() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    mu, sigma = feature_statistics(x)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)), "different dimensions"),
        ((np.zeros(3), np.eye(2), np.zeros(3), np.eye(3)), "sigma1"),
        ((np.zeros(3), np.eye(3), np.zeros(3), np.full((3, 3), np.nan)), "sigma2"),
        ((np.zeros((3, 1)), np.eye(3), np.zeros(3), np.eye(3)), "mu1"),
    ],
)
def test_bad_inputs(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        frechet_distance(*args)


def test_feature_statistics_bad_inputs() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        feature_statistics(np.zeros(3))
