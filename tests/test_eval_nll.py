"""ddpm nll: the bound's terms add up, do not depend on batching or on the process count; files and figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _eval_tiny import make_checkpoint, one_thread, png_size, read_csv, run_cli  # noqa: F401 (autouse fixture)
from ddpm.cli import main
from ddpm.data import dataset_for
from ddpm.evaluation.nll import bound_totals, merge_totals
from ddpm.loading import load_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("nll") / "ckpt")


@pytest.fixture(scope="module")
def test_images(ckpt):
    m = load_model(ckpt)
    return m, dataset_for(m.config, "test")


def test_terms_add_up_and_do_not_depend_on_batching(test_images):
    m, ds = test_images
    a = bound_totals(m, m.diffusion, ds, range(6), seed=3, batch_size=6, t_per_batch=20, keep_terms=True)
    b = bound_totals(m, m.diffusion, ds, range(6), seed=3, batch_size=4, t_per_batch=3, keep_terms=True)
    assert a.terms_bpd.shape == (6, 20)
    torch.testing.assert_close(a.total_bpd, a.prior_bpd + a.terms_bpd.double().sum(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a.decoder_bpd, a.terms_bpd[:, 0].double(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(a.total_bpd, b.total_bpd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.term_sum, b.term_sum, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.x0_mse_sum, b.x0_mse_sum, rtol=1e-5, atol=1e-7)
    assert (a.terms_bpd[:, 1:] >= 0).all() and (a.prior_bpd > 0).all()
    # two shares merged = the whole; another seed gives other noise
    halves = merge_totals([bound_totals(m, m.diffusion, ds, r, seed=3, batch_size=6, t_per_batch=20)
                           for r in (range(0, 2), range(2, 6))])
    torch.testing.assert_close(halves.total_bpd, a.total_bpd, rtol=1e-5, atol=1e-6)
    assert halves.indices.tolist() == list(range(6))
    other = bound_totals(m, m.diffusion, ds, range(6), seed=4, batch_size=6, t_per_batch=20)
    assert not torch.allclose(other.total_bpd, a.total_bpd)


def _check_nll_outputs(out: Path, n: int, T: int = 20) -> dict:
    s = json.loads((out / "nll.json").read_text())
    assert s["n_images"] == n and s["T"] == T and s["split"] == "test" and s["dataset"] == "digits"
    terms = read_csv(out / "terms.csv")
    assert [int(r["t"]) for r in terms] == list(range(1, T + 1)) and terms[0]["term"] == "L_0"
    mean_terms = sum(float(r["mean_bits_per_dim"]) for r in terms)
    assert s["nll_bits_per_dim"] == pytest.approx(s["prior_bits_per_dim"] + mean_terms, rel=1e-9)
    assert s["decoder_bits_per_dim"] == pytest.approx(float(terms[0]["mean_bits_per_dim"]), rel=1e-9)
    assert s["rate_bits_per_dim"] + s["distortion_bits_per_dim"] == pytest.approx(s["nll_bits_per_dim"], rel=1e-12)
    per_image = read_csv(out / "per_image.csv")
    assert len(per_image) == n
    assert np.mean([float(r["total_bits_per_dim"]) for r in per_image]) == pytest.approx(s["nll_bits_per_dim"])
    assert s["nll_stderr_bits_per_dim"] > 0
    assert png_size(out / "terms.png")[0] > 100
    args = json.loads((out / "args.json").read_text())
    assert args["command"] == "nll" and args["options"]["common"]["limit"] == n
    assert json.loads((out / "config.json").read_text())["diffusion"]["T"] == T
    return s


def test_nll_command_writes_consistent_files(ckpt, tmp_path):
    out = tmp_path / "nll"
    assert main(["nll", "--checkpoint", str(ckpt), "--out", str(out), "--limit", "5", "--t-batch", "7",
                 "--batch-size", "3", "--save-terms", "--no-progress"]) == 0
    s = _check_nll_outputs(out, 5)
    with np.load(out / "terms.npz") as z:
        assert z["terms_bits_per_dim"].shape == (5, 20)
        assert z["indices"].tolist() == list(range(5))
        total = z["prior_bits_per_dim"] + z["terms_bits_per_dim"].sum(1)
    assert total.mean() == pytest.approx(s["nll_bits_per_dim"], rel=1e-5)


def test_two_processes_equal_one(ckpt, tmp_path):
    """torchrun with 2 gloo processes (progress bars on, no TTY) gives the single process's numbers."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["nll", "--checkpoint", str(ckpt), "--out", str(one), "--limit", "7", "--t-batch", "10",
                 "--batch-size", "7", "--no-progress"]) == 0
    proc = run_cli("nll", "--checkpoint", str(ckpt), "--out", str(two), "--limit", "7", "--t-batch", "4",
                   "--batch-size", "2", nproc=2)
    assert "NLL" in proc.stdout
    a, b = _check_nll_outputs(one, 7), _check_nll_outputs(two, 7)
    assert json.loads((two / "args.json").read_text())["world_size"] == 2
    for key in ("nll_bits_per_dim", "prior_bits_per_dim", "decoder_bits_per_dim", "nll_stderr_bits_per_dim"):
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-9)
    rows_a, rows_b = read_csv(one / "per_image.csv"), read_csv(two / "per_image.csv")
    assert [r["index"] for r in rows_b] == [str(i) for i in range(7)]
    np.testing.assert_allclose([float(r["total_bits_per_dim"]) for r in rows_b],
                               [float(r["total_bits_per_dim"]) for r in rows_a], rtol=1e-5)


def test_steps_gives_the_bound_of_the_respaced_chain(ckpt, tmp_path):
    """``--steps K``: the bound of the K-step chain through evenly spaced steps (what compression at K steps costs)."""
    from ddpm.schedules import spaced_steps

    out = tmp_path / "nll5"
    assert main(["nll", "--checkpoint", str(ckpt), "--out", str(out), "--limit", "4", "--steps", "5",
                 "--no-progress"]) == 0
    s = json.loads((out / "nll.json").read_text())
    assert s["T"] == 5 and s["steps"] == 5 and len(read_csv(out / "terms.csv")) == 5
    # each term names its time in the model's 20-step chain (it said 1..5 alone)
    assert [int(r["original_t"]) for r in read_csv(out / "terms.csv")] == spaced_steps(20, 5)
    m = load_model(ckpt)
    ds = dataset_for(m.config, "test")
    respaced = bound_totals(m, m.diffusion.respaced(spaced_steps(20, 5)), ds, range(4), seed=0, t_per_batch=5)
    full = bound_totals(m, m.diffusion, ds, range(4), seed=0, t_per_batch=10)
    assert s["nll_bits_per_dim"] == pytest.approx(respaced.total_bpd.mean().item(), rel=1e-5)
    assert abs(s["nll_bits_per_dim"] - full.total_bpd.mean().item()) > 1e-3
    assert main(["nll", "--checkpoint", str(ckpt), "--out", str(tmp_path / "bad"), "--steps", "21"]) == 2
