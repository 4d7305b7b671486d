"""benchmarks/independent_digits.py: pixel-space measures that share no code with ddpm's digits metric, each
checked against a closed form or a brute-force loop."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def ind() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_independent_digits", BENCHMARKS / "independent_digits.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _gaussian_mean_kernel(width: float, var: float, shift2: float, d: int) -> float:
    """E exp(−‖z‖²/(2 width²)) for z ~ N(m, var·I_d) with ‖m‖² = shift2 (a Gaussian integral)."""
    return (width**2 / (width**2 + var)) ** (d / 2) * math.exp(-shift2 / (2 * (width**2 + var)))


def test_mmd2_matches_the_closed_form_for_two_gaussians(ind: ModuleType) -> None:
    # x ~ N(0, s²I), y ~ N(m, s²I): MMD² = E k(x,x') + E k(y,y') − 2 E k(x,y), each a Gaussian integral
    d, s, width = 4, 1.0, 1.5
    m = np.array([0.8, 0.0, 0.0, 0.0])
    exact = 2 * _gaussian_mean_kernel(width, 2 * s**2, 0.0, d) - 2 * _gaussian_mean_kernel(width, 2 * s**2, 0.64, d)
    rng = np.random.default_rng(0)
    estimates = [ind.mmd2_unbiased(rng.normal(0, s, (400, d)), rng.normal(0, s, (400, d)) + m, width)
                 for _ in range(20)]
    se = np.std(estimates, ddof=1) / math.sqrt(len(estimates))
    assert exact > 20 * se  # far from 0 at this precision: the test can tell a wrong estimator
    assert np.mean(estimates) == pytest.approx(exact, abs=3 * se)


def test_mmd2_is_unbiased_at_zero_where_the_plain_estimate_is_not(ind: ModuleType) -> None:
    rng = np.random.default_rng(1)
    estimates, biased = [], []
    for _ in range(200):
        x, y = rng.normal(size=(30, 3)), rng.normal(size=(30, 3))
        estimates.append(ind.mmd2_unbiased(x, y, 1.0))
        kxx, kyy, kxy = (ind.gaussian_kernel(a, b, 1.0) for a, b in ((x, x), (y, y), (x, y)))
        biased.append(kxx.mean() + kyy.mean() - 2 * kxy.mean())
    se = np.std(estimates, ddof=1) / math.sqrt(len(estimates))
    assert abs(np.mean(estimates)) < 3 * se
    assert np.mean(biased) > 10 * se  # with the diagonals in, the same sets look different


def _coverage_by_loops(points: np.ndarray, support: np.ndarray, k: int) -> float:
    inside = 0
    for p in points:
        for s in support:
            others = sorted(float(np.linalg.norm(s - o)) for o in support)
            if np.linalg.norm(p - s) <= others[k]:  # others[0] is s itself
                inside += 1
                break
    return inside / len(points)


def test_precision_and_recall_match_a_brute_force_count(ind: ModuleType) -> None:
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(40, 2)), rng.normal(size=(50, 2)) * 1.5 + 0.7
    precision, recall = ind.precision_recall(fake, real, k=3)
    assert precision == pytest.approx(_coverage_by_loops(fake, real, 3))
    assert recall == pytest.approx(_coverage_by_loops(real, fake, 3))
    assert 0.0 < precision < 1.0 and 0.0 < recall < 1.0
    assert ind.precision_recall(real, real) == (1.0, 1.0)
    assert ind.precision_recall(real + 100.0, real) == (0.0, 0.0)


def test_a_points_coverage_on_a_line_is_its_k_th_neighbours_ball(ind: ModuleType) -> None:
    line = np.arange(10.0)[:, None]  # 0..9; the ball of 9 has radius 3 (its 3rd neighbour is 6)
    assert ind.manifold_coverage(np.array([[11.9]]), line, k=3) == 1.0
    assert ind.manifold_coverage(np.array([[12.1]]), line, k=3) == 0.0


def test_memorisation_sees_copies_and_not_fresh_digits(ind: ModuleType) -> None:
    ref = ind.Reference.build()
    levels = np.rint(ref.train * 16).astype(np.uint8)
    copies = ref.score(levels[:64])
    assert copies.copies == 1.0 and copies.memorisation_ratio == 0.0 and copies.nn_train_median == 0.0
    test_levels = np.rint(ref.test * 16).astype(np.uint8)
    fresh = ref.score(test_levels)
    assert fresh.memorisation_ratio == pytest.approx(1.0)  # the test split is the ratio's own reference
    duplicated = np.mean([any((t == r).all() for r in levels) for t in test_levels])  # brute force
    assert fresh.copies == pytest.approx(duplicated)
    # a sample halfway between a training digit and a blank one is novel, but nearer than a fresh digit
    assert ref.score(levels[:64] // 2).memorisation_ratio > 0.0


def test_the_svm_score_is_10_for_confident_even_classes_and_1_for_one_class(ind: ModuleType) -> None:
    even = SimpleNamespace(predict_proba=lambda x: np.eye(10)[np.arange(len(x)) % 10])
    one = SimpleNamespace(predict_proba=lambda x: np.eye(10)[np.zeros(len(x), int)])
    assert ind.svm_scores(even, np.zeros((50, 64))) == pytest.approx((1.0, 10.0))
    assert ind.svm_scores(one, np.zeros((50, 64))) == pytest.approx((1.0, 1.0))


def test_samples_read_back_to_their_levels(ind: ModuleType, tmp_path: Path) -> None:
    from ddpm.data.digits import digits_arrays
    from ddpm.data.levels import from_levels
    from ddpm.images import to_display_uint8

    levels, _ = digits_arrays("test")
    path = tmp_path / "s.npz"  # as ddpm sample writes a digits model's samples: uint8 NHWC on 0..255
    np.savez(path, images=to_display_uint8(from_levels(levels[:, None], 17)))
    np.testing.assert_array_equal(ind.read_samples(path), levels.reshape(len(levels), 64))
    np.savez(path, images=np.zeros((4, 8, 8, 1), np.float32))
    with pytest.raises(SystemExit, match="expected uint8"):
        ind.read_samples(path)


def test_the_script_scores_sample_files_beside_real_sets(ind: ModuleType, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from ddpm.data.digits import digits_arrays

    levels, _ = digits_arrays("train")
    for seed in (0, 1):  # two seeds of one "sampler" that copies the training set: one row
        rng = np.random.default_rng(seed)
        np.savez(tmp_path / f"copier-20-logsnr-seed{seed}.npz",
                 images=(levels[rng.choice(len(levels), 60)].astype(np.int64) * 255 // 16).astype(np.uint8)[..., None])
    noise = np.random.default_rng(2).integers(0, 256, (60, 8, 8, 1)).astype(np.uint8)
    np.savez(tmp_path / "noise.npz", images=noise)
    ind.main([str(p) for p in sorted(tmp_path.glob("*.npz"))] + ["--real-draws", "2"])
    table = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines() if line.startswith("| ") and not line.startswith("| set")}
    assert set(rows) == {"copier-20-logsnr", "noise", "real: 60 training digits (memorisation: test digits)"}
    assert rows["copier-20-logsnr"][0] == "2" and rows["copier-20-logsnr"][-1].startswith("1.000")
    noise_mmd, real_mmd = float(rows["noise"][1]), float(rows["real: 60 training digits (memorisation: test "
                                                             "digits)"][1].split()[0])
    assert noise_mmd > real_mmd + 1.0  # ×10³: uniform noise is far from digits
    assert float(rows["noise"][3]) < 0.2  # no noise image lies on the digits' manifold
