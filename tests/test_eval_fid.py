"""ddpm fid: the digits metric for digits models, FID wiring (stand-in extractor, statistics files), clear errors."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from torch import nn

from _eval_tiny import make_checkpoint
from ddpm.cli import main
from ddpm.data import digits_arrays
from ddpm.evaluation.common import DataChoice
from ddpm.evaluation.quality import FidOptions, digits_quality, run_fid


@pytest.fixture(autouse=True)
def _tmp_cache(monkeypatch, tmp_path_factory):
    """The digits classifier is trained once per session into a temporary cache, never the home directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


@pytest.fixture(scope="module")
def real_npz(tmp_path_factory):
    """200 real train digits as uint8 NHWC on 0..255, as `ddpm sample` writes samples."""
    images, _ = digits_arrays("train")
    x = np.round(images[:200].astype(np.float64) * 255 / 16).astype(np.uint8)[..., None]
    path = tmp_path_factory.mktemp("fid") / "real.npz"
    np.savez(path, images=x)
    return path


class MeanPool(nn.Module):
    """A stand-in feature extractor: uint8 NCHW → 16 pooled features (nothing to download)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1)


def test_digits_mode_is_automatic_for_digits_models(tmp_path, real_npz):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "fid"
    assert main(["fid", "--samples", str(real_npz), "--checkpoint", str(ckpt), "--out", str(out),
                 "--limit", "150"]) == 0
    q = json.loads((out / "digits_quality.json").read_text())
    assert q["n_samples"] == 150 and q["fd"] < 3 * q["fd_real_vs_real"] + 5 and q["class_score"] > 5
    assert (out / "digits_classes.png").exists() and (out / "samples_preview.png").exists()
    assert json.loads((out / "args.json").read_text())["command"] == "fid"
    noise = np.random.default_rng(0).integers(0, 256, (150, 8, 8, 1), dtype=np.uint8)
    assert digits_quality(noise).fd > q["fd"] + 50  # noise is far from digits


def test_fid_with_a_stand_in_extractor_and_statistics_files(tmp_path, real_npz):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    stats = tmp_path / "ref_stats.npz"
    common = dict(checkpoint=str(ckpt), data=DataChoice("test"), digits=False, feature_extractor=MeanPool(),
                  batch_size=64)
    a = run_fid(FidOptions(str(real_npz), str(tmp_path / "a"), save_stats=str(stats), **common))
    b = run_fid(FidOptions(str(real_npz), str(tmp_path / "b"), reference_stats=str(stats), **common))
    assert a.metric == "fid" and a.fid.feature_dim == 16 and a.fid.n_samples == 200 and a.fid.n_reference == 180
    assert b.fid.fid == pytest.approx(a.fid.fid, rel=1e-9) and a.fid.fid > 0
    assert json.loads((tmp_path / "a" / "fid.json").read_text())["fid"] == pytest.approx(a.fid.fid)


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity is installed")
def test_missing_inception_dependency_is_a_clear_error(tmp_path, real_npz, capsys):
    stats = tmp_path / "s.npz"
    np.savez(stats, mu=np.zeros(2048), sigma=np.eye(2048))
    assert main(["fid", "--samples", str(real_npz), "--ref-stats", str(stats), "--out", str(tmp_path / "f")]) == 2
    assert "torch-fidelity" in capsys.readouterr().err
