"""Fréchet distance between Gaussians fitted to feature sets (the distance behind FID), in float64.

For N(μ1, Σ1) and N(μ2, Σ2) the squared 2-Wasserstein (Fréchet) distance is

    FD = |μ1 − μ2|² + tr Σ1 + tr Σ2 − 2 tr (Σ1 Σ2)^{1/2}.

The trace of the matrix square root is computed through the symmetric matrix
M = Σ1^{1/2} Σ2 Σ1^{1/2}, which is similar to Σ1 Σ2 (same eigenvalues, all real and ≥ 0), so
tr (Σ1 Σ2)^{1/2} = Σ_i sqrt(λ_i(M)). This route uses only symmetric eigendecompositions (``eigh``):

* it never produces complex numbers, so the "small imaginary part" that ``scipy.linalg.sqrtm(Σ1 Σ2)``
  returns in the usual implementation (pytorch-fid, TTUR) cannot arise;
* singular or near-singular covariances (fewer samples than feature dimensions, dead ReLU units) need
  no ``eps · I`` retry: eigenvalues of Σ1 and of M that round-off makes slightly negative are clipped
  to 0 — the exact PSD answer — which is what the ``eps`` offset approximates in the usual
  implementation. An explicit offset is still available through ``eps`` (default 0: no bias).

The result is clipped at 0 (round-off can give −1e-13 for identical inputs).
"""

from __future__ import annotations

import numpy as np

__all__ = ["frechet_distance", "feature_statistics", "trace_sqrt_product"]


def _as_mean(mu: np.ndarray, name: str) -> np.ndarray:
    """Validate a mean vector and return it as float64 of shape (d,)."""
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    if mu.ndim != 1:
        raise ValueError(f"{name} must be a vector of shape (d,), got shape {mu.shape}")
    if not np.all(np.isfinite(mu)):
        raise ValueError(f"{name} contains non-finite values")
    return mu


def _as_cov(sigma: np.ndarray, d: int, name: str) -> np.ndarray:
    """Validate a covariance matrix of shape (d, d) and return it symmetrised in float64."""
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if sigma.shape != (d, d):
        raise ValueError(f"{name} must have shape ({d}, {d}) to match the mean, got {sigma.shape}")
    if not np.all(np.isfinite(sigma)):
        raise ValueError(f"{name} contains non-finite values")
    return 0.5 * (sigma + sigma.T)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix; negative round-off eigenvalues clipped to 0."""
    eigvals, eigvecs = np.linalg.eigh(sigma)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (Σ1 Σ2)^{1/2} for symmetric PSD Σ1, Σ2, via the eigenvalues of Σ1^{1/2} Σ2 Σ1^{1/2}."""
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eigvals = np.linalg.eigvalsh(0.5 * (middle + middle.T))
    return float(np.sqrt(np.clip(eigvals, 0.0, None)).sum())


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 0.0
) -> float:
    """Fréchet distance |μ1−μ2|² + tr(Σ1 + Σ2 − 2(Σ1Σ2)^{1/2}) in float64 (``eps`` adds eps·I to both Σ)."""
    mu1 = _as_mean(mu1, "mu1")
    mu2 = _as_mean(mu2, "mu2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2 have different dimensions: {mu1.shape} vs {mu2.shape}")
    d = mu1.shape[0]
    sigma1 = _as_cov(sigma1, d, "sigma1")
    sigma2 = _as_cov(sigma2, d, "sigma2")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if eps > 0:
        sigma1 = sigma1 + eps * np.eye(d)
        sigma2 = sigma2 + eps * np.eye(d)
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return max(float(value), 0.0)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and unbiased covariance (d, d), both float64, of features of shape (N, d) with N ≥ 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must have shape (N, d), got {features.shape}")
    if features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors to estimate a covariance, got {features.shape[0]}")
    if not np.all(np.isfinite(features)):
        raise ValueError("features contain non-finite values")
    mu = features.mean(axis=0)
    centred = features - mu
    sigma = centred.T @ centred / (features.shape[0] - 1)
    return mu, sigma
