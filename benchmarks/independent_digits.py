"""Digits sample quality measured without any of ddpm's metrics: scikit-learn and numpy in pixel space.

The project scores digits samples with its own classifier (``ddpm.evaluation.digits_metric``); this script
checks those numbers against measures that share no code with it::

    python benchmarks/bench_samplers.py --checkpoint RUN --save-samples runs/samples --seeds 0,1,2,3 ...
    python benchmarks/independent_digits.py runs/samples/*.npz [--json out.json]

(or any ``.npz`` of ``ddpm sample`` / ``ddpm quickstart`` on a digits model). Every image is read back to its 17
levels and scaled to [0, 1] (64 pixels). Per file, against the held-out test split (180 digits):

- **MMD²** (unbiased, Gretton et al. 2012) with a Gaussian kernel whose width is a quarter of the median pixel
  distance between training digits: 0 in expectation when samples and test digits share a distribution (and,
  conditional on the one fixed test split, somewhat below 0 for real sets). At the median itself (the usual
  heuristic) the kernel is too smooth for 64 pixels: one set of 256 real digits then varies by more than any
  of the quickstart's sample sets differs from the real sets' mean;
- **precision / recall** of Kynkäänniemi et al. (2019), k = 3 nearest neighbours: the share of samples inside the
  test digits' k-NN balls, and of test digits inside the samples';
- an **SVM** (scikit-learn's SVC, RBF kernel, fitted on the 1,617 training digits, probabilities calibrated by
  5-fold Platt scaling; it classifies all 180 test digits correctly): its mean confidence on the samples and an
  Inception-Score-style exp(E KL(p(y|x) ‖ p(y))) (max 10);
- **memorisation**: the distance from each sample to its nearest training digit, as a median, against the same
  median for the test digits (which the model never saw): a ratio well below 1 means samples copy the training
  set; and the share of samples equal to a training digit at every pixel.

Real sets of the same size (draws from the training split, without replacement) give each measure's baseline
as mean ± sd over ``--real-draws`` draws, so a reader sees the noise of one set; for memorisation, whose real
counterpart is the test split itself, the draws are resamplings of the test digits. Only the train/test split is
taken from ddpm (``ddpm.data.digits``), so that "test" means the digits the project's own metric uses.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.metrics import pairwise_distances
from sklearn.neighbors import NearestNeighbors
from sklearn.svm import SVC

LEVELS = 17   # the digits' grey levels 0..16 (scikit-learn's load_digits)
K_NN = 3      # Kynkäänniemi et al.'s k
WIDTH_OF_MEDIAN = 0.25  # the kernel's width, as a share of the median pixel distance between training digits


# --- the measures (pure functions of pixel arrays (N, 64) in [0, 1]) ----------------------------------

def gaussian_kernel(a: np.ndarray, b: np.ndarray, width: float) -> np.ndarray:
    """k(x, y) = exp(−‖x − y‖² / (2 width²)) for every pair of rows."""
    return np.exp(-pairwise_distances(a, b, metric="sqeuclidean") / (2.0 * width**2))


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, width: float) -> float:
    """Gretton et al.'s unbiased MMD²: the mean kernel within x and within y (diagonals left out) minus twice
    the mean across."""
    kxx, kyy, kxy = gaussian_kernel(x, x, width), gaussian_kernel(y, y, width), gaussian_kernel(x, y, width)
    m, n = len(x), len(y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


def median_width(x: np.ndarray) -> float:
    """The median heuristic: the median distance between two different rows of ``x``."""
    d = pairwise_distances(x)
    return float(np.median(d[np.triu_indices(len(x), k=1)]))


def knn_radii(x: np.ndarray, k: int = K_NN) -> np.ndarray:
    """Each row's distance to its k-th nearest other row."""
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return dist[:, k]


def manifold_coverage(points: np.ndarray, support: np.ndarray, k: int = K_NN) -> float:
    """The share of ``points`` inside some ball around a row of ``support`` of radius its k-NN distance."""
    radii = knn_radii(support, k)
    inside = pairwise_distances(points, support) <= radii[None, :]
    return float(inside.any(axis=1).mean())


def precision_recall(samples: np.ndarray, real: np.ndarray, k: int = K_NN) -> tuple[float, float]:
    """Kynkäänniemi et al.'s improved precision (samples on the real manifold) and recall (real on the samples')."""
    return manifold_coverage(samples, real, k), manifold_coverage(real, samples, k)


def nearest_distance(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each row's distance to its nearest row of ``reference``."""
    dist, _ = NearestNeighbors(n_neighbors=1).fit(reference).kneighbors(points)
    return dist[:, 0]


def exact_copies(points: np.ndarray, reference: np.ndarray) -> float:
    """The share of ``points`` equal, at every pixel, to some row of ``reference``."""
    return float((nearest_distance(points, reference) == 0.0).mean())


def svm_scores(svm: CalibratedClassifierCV, x: np.ndarray) -> tuple[float, float]:
    """Mean max-probability and exp(E_x KL(p(y|x) ‖ p(y))) of the SVM's class probabilities on ``x``."""
    p = np.clip(svm.predict_proba(x), 1e-12, 1.0)
    marginal = p.mean(axis=0, keepdims=True)
    kl = (p * (np.log(p) - np.log(marginal))).sum(axis=1)
    return float(p.max(axis=1).mean()), float(np.exp(kl.mean()))


# --- data -------------------------------------------------------------------------------------------

def to_unit(levels: np.ndarray) -> np.ndarray:
    """(N, 8, 8) or (N, 64) digit levels 0..16 → (N, 64) floats in [0, 1]."""
    return levels.reshape(len(levels), -1).astype(np.float64) / (LEVELS - 1)


def read_samples(path: Path) -> np.ndarray:
    """The uint8 images of a samples ``.npz`` (key ``images``, 0..255, N×8×8[×1]) as their 17 levels."""
    with np.load(path, allow_pickle=False) as z:
        if "images" not in z.files:
            raise SystemExit(f"{path}: no 'images' array (members: {z.files})")
        images = z["images"]
    if images.dtype != np.uint8 or images.size % 64 or images.ndim < 3 or images.shape[1:3] != (8, 8):
        raise SystemExit(f"{path}: expected uint8 digits images N×8×8(×1), got {images.dtype} {images.shape}")
    return np.rint(images.reshape(len(images), 64).astype(np.float64) * (LEVELS - 1) / 255.0).astype(np.uint8)


def digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The project's fixed train/test split of scikit-learn's digits (ddpm.data.digits), as levels and labels."""
    from ddpm.data.digits import digits_arrays  # the split only; nothing of ddpm's metrics

    images, labels = digits_arrays(split)  # type: ignore[arg-type]
    return images.reshape(len(images), 64), labels


# --- one set of images ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scores:
    """The independent measures of one set of digits."""

    mmd2: float               # against the test split
    precision: float
    recall: float
    svm_confidence: float
    svm_score: float          # IS-style, max 10
    nn_train_median: float    # median distance to the nearest training digit
    memorisation_ratio: float  # nn_train_median / the test digits' own (1: as novel as unseen real digits)
    copies: float             # share equal to a training digit


@dataclass(frozen=True)
class Reference:
    """What every set is compared with: the test split, the training split, the fitted SVM."""

    train: np.ndarray
    test: np.ndarray
    width: float
    svm: CalibratedClassifierCV
    test_nn_train_median: float

    @classmethod
    def build(cls) -> Reference:
        train_levels, train_labels = digits_split("train")
        test_levels, test_labels = digits_split("test")
        train, test = to_unit(train_levels), to_unit(test_levels)
        svm = CalibratedClassifierCV(SVC(kernel="rbf"), ensemble=False).fit(train, train_labels)
        accuracy = float((svm.predict(test) == test_labels).mean())
        if accuracy < 0.95:
            raise SystemExit(f"the SVM reaches only {accuracy:.3f} on the test digits: something is wrong")
        width = WIDTH_OF_MEDIAN * median_width(train)
        return cls(train, test, width, svm, float(np.median(nearest_distance(test, train))))

    def score(self, images: np.ndarray) -> Scores:
        x = to_unit(images)
        precision, recall = precision_recall(x, self.test)
        confidence, score = svm_scores(self.svm, x)
        nn = float(np.median(nearest_distance(x, self.train)))
        return Scores(mmd2_unbiased(x, self.test, self.width), precision, recall, confidence, score, nn,
                      nn / self.test_nn_train_median, exact_copies(x, self.train))


def real_baseline(ref: Reference, n: int, draws: int, seed: int = 0) -> list[Scores]:
    """The scores of ``draws`` sets of n training digits (drawn without replacement, numpy seed ``seed``); their
    memorisation fields are those of n test digits drawn with replacement (a training digit is its own nearest)."""
    rng = np.random.default_rng(seed)
    train = np.rint(ref.train * (LEVELS - 1)).astype(np.uint8)
    test = np.rint(ref.test * (LEVELS - 1)).astype(np.uint8)
    out = []
    for _ in range(draws):
        s = ref.score(train[rng.choice(len(train), size=n, replace=False)])
        novel = ref.score(test[rng.choice(len(test), size=n, replace=True)])
        out.append(replace(s, nn_train_median=novel.nn_train_median, memorisation_ratio=novel.memorisation_ratio,
                           copies=novel.copies))
    return out


# --- the table ------------------------------------------------------------------------------------

FIELDS = ("mmd2", "precision", "recall", "svm_confidence", "svm_score", "memorisation_ratio", "copies")
HEADS = ("MMD² ×10³ ↓", "precision ↑", "recall ↑", "SVM confidence ↑", "SVM score ↑", "NN-train ratio",
         "copies")
SCALE = {"mmd2": 1e3}


def group_name(path: Path) -> str:
    """A file's row: its name without a trailing seed (``…-seed3``), so that seeds of one sampler pool."""
    return re.sub(r"[-_]seed\d+$", "", path.stem)


def mean_sd(values: list[float]) -> str:
    m = statistics.mean(values)
    return f"{m:.3f}" if len(values) < 2 else f"{m:.3f} ± {statistics.stdev(values):.3f}"


def markdown(groups: dict[str, list[Scores]], real: list[Scores], n_real: int) -> str:
    """One row per sampler (mean ± sd over its files), then the real sets."""
    lines = ["| set | files | " + " | ".join(HEADS) + " |", "|---|---:|" + "---:|" * len(HEADS)]
    for name, rows in [*groups.items(), (f"real: {n_real} training digits (memorisation: test digits)", real)]:
        cells = [mean_sd([getattr(r, f) * SCALE.get(f, 1.0) for r in rows]) for f in FIELDS]
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("samples", nargs="+", type=Path, help=".npz files of digits samples (key 'images', uint8)")
    p.add_argument("--real-draws", type=int, default=20, help="real sets for the baseline (default 20)")
    p.add_argument("--json", type=Path, help="also write every file's scores to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ref = Reference.build()
    groups: dict[str, list[Scores]] = {}
    per_file: dict[str, dict[str, float]] = {}
    sizes = set()
    for path in args.samples:
        images = read_samples(path)
        sizes.add(len(images))
        s = ref.score(images)
        groups.setdefault(group_name(path), []).append(s)
        per_file[str(path)] = asdict(s)
    n = min(sizes)
    if len(sizes) > 1:
        print(f"note: the files hold {sorted(sizes)} images; the real sets have {n}", file=sys.stderr)
    real = real_baseline(ref, n, args.real_draws)
    print(f"test split: {len(ref.test)} digits; kernel width {ref.width:.3f} (median pixel distance between "
          f"training digits × {WIDTH_OF_MEDIAN}, pixels in [0, 1]); test digits' median distance to the nearest "
          f"training digit {ref.test_nn_train_median:.3f}\n")
    print(markdown(groups, real, n))
    if args.json:
        args.json.write_text(json.dumps({"files": per_file, "real": [asdict(r) for r in real]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
