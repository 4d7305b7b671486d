"""Class-conditional models end to end: the config fields, label dropout in training, checkpoints that keep their
class names, ``ddpm sample --class/--guidance`` and the conditional bound of ``ddpm nll``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _eval_tiny import one_thread, png_size, tiny_config  # noqa: F401 (autouse fixture)
from ddpm.checkpoint import load_checkpoint, save_model
from ddpm.cli import main
from ddpm.config import ConfigError, RunConfig, check_resume_config, override, preset
from ddpm.data import dataset_for
from ddpm.evaluation.common import check_model_classes
from ddpm.loading import load_model
from ddpm.nets import network_for
from ddpm.rng import generator
from ddpm.sampling import sample
from ddpm.train import train
from ddpm.train import trainer as trainer_module
from test_guidance import randomize

TINY = dict(base_channels=16, channel_mults=[1, 2], attn_resolutions=[4], num_groups=8, T=50, batch_size=16,
            warmup_steps=5, log_every=2, sample_every=0, checkpoint_every=3, total_steps=4, ema_decay=0.9)


def conditional_checkpoint(path, label_dropout: float = 0.1, names: list[str] | None = None, seed: int = 0):
    """A model-only checkpoint of a tiny 10-class U-Net, every weight random (tests/test_guidance.randomize)."""
    cfg = tiny_config(num_classes=10, label_dropout=label_dropout)
    torch.manual_seed(seed)
    net = network_for(cfg)
    randomize(net)
    extra = {"class_names": names} if names is not None else {}
    return save_model(path, cfg.to_dict(), net.state_dict(), extra=extra)


# --- the configuration ------------------------------------------------------------------------------------

def test_unconditional_is_the_default_and_old_configs_load_unconditional():
    cfg = preset("digits")
    assert cfg.model.num_classes is None and cfg.train.label_dropout == 0.1
    old = cfg.to_dict()
    del old["model"]["num_classes"], old["train"]["label_dropout"]  # a config written before this feature
    again = RunConfig.from_dict(old)
    assert again == cfg
    check_resume_config(cfg, old)  # resuming an old run is not a change of what is trained
    assert preset("toy2d").model.num_classes is None  # the MLP has no classes, and no such option
    with pytest.raises(ConfigError, match="unknown option 'num_classes'"):
        override(preset("toy2d"), num_classes=3)


@pytest.mark.parametrize("changes, match", [
    ({"num_classes": 0}, r"model.num_classes must be >= 1, got 0"),
    ({"num_classes": 10, "label_dropout": 1.5}, r"train.label_dropout must be in \[0, 1\], got 1.5"),
    ({"num_classes": 10, "label_dropout": -0.1}, r"train.label_dropout must be in \[0, 1\]"),
    ({"label_dropout": 0.2}, r"label_dropout applies to class-conditional models only: set model.num_classes"),
])
def test_bad_values_name_the_option(changes, match):
    with pytest.raises(ConfigError, match=match):
        override(preset("digits"), **changes)


def test_an_unconditional_models_hash_is_the_one_before_class_conditioning(tmp_path):
    """Compressed files and Γ estimates name their model by this hash: num_classes=None must not change it."""
    from _eval_tiny import make_checkpoint
    from ddpm.compression import model_hash

    # computed with the code before model.num_classes existed (main at 040b28e)
    assert model_hash(load_model(make_checkpoint(tmp_path / "ck"))).hex() == "7e773026a225451938d94579049963f3"


# --- training -----------------------------------------------------------------------------------------------

def test_label_dropout_rate_of_the_trainer(tmp_path, monkeypatch):
    seen = []
    real = trainer_module.drop_labels

    def recording(y, u, p, null_class):
        out = real(y, u, p, null_class)
        seen.append((y.clone(), out.clone(), null_class))
        return out

    monkeypatch.setattr(trainer_module, "drop_labels", recording)
    cfg = override(preset("digits"), **{**TINY, "total_steps": 12}, num_classes=10, label_dropout=0.25)
    train(cfg, tmp_path / "run", progress=False, device="cpu")
    assert len(seen) == 12 and all(k == 10 for *_, k in seen)
    before = torch.cat([a for a, _, _ in seen])
    after = torch.cat([b for _, b, _ in seen])
    dropped = after == 10
    assert 0.15 < dropped.float().mean().item() < 0.35  # 192 labels at p = 0.25: ±0.1 is > 3 standard errors
    assert torch.equal(after[~dropped], before[~dropped]) and before.max() <= 9
    # the draw is stream (seed, "label-dropout", step): the same run drops the same labels
    u = torch.rand(16, generator=generator(cfg.train.seed, "label-dropout", 0))
    assert torch.equal(dropped[:16], u < 0.25)


def test_drop_labels_at_the_ends_and_in_between():
    y = torch.arange(20_000) % 7
    u = torch.rand(20_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(trainer_module.drop_labels(y, u, 0.0, 7), y)
    assert (trainer_module.drop_labels(y, u, 1.0, 7) == 7).all()
    assert abs((trainer_module.drop_labels(y, u, 0.1, 7) == 7).float().mean().item() - 0.1) < 0.007


@pytest.mark.parametrize("p, trained", [(0.0, "classes"), (1.0, "null")])
def test_label_dropout_zero_never_trains_the_null_row_and_one_never_the_classes(tmp_path, p, trained):
    from ddpm.rng import seed_torch

    cfg = override(preset("digits"), **{**TINY, "total_steps": 6}, num_classes=10, label_dropout=p)
    train(cfg, tmp_path / "run", progress=False, device="cpu")
    ckpt = load_checkpoint(tmp_path / "run")
    seed_torch(cfg.train.seed, "weights")
    initial = network_for(cfg).state_dict()["class_embed.weight"]
    final = ckpt.model["class_embed.weight"]
    changed = (final != initial).any(dim=1)
    assert changed.tolist() == ([True] * 10 + [False] if trained == "classes" else [False] * 10 + [True])
    assert ckpt.extra["class_names"] == list("0123456789")


def test_a_trained_conditional_model_keeps_its_class_names_and_unconditional_training_is_unchanged(tmp_path):
    cfg = override(preset("digits"), **TINY, num_classes=10)
    train(cfg, tmp_path / "c", progress=False, device="cpu")
    m = load_model(tmp_path / "c")
    assert m.num_classes == 10 and m.class_names == tuple("0123456789") and m.null_class_trained
    assert "class_embed.weight" in m.net.state_dict()
    train(override(preset("digits"), **TINY), tmp_path / "u", progress=False, device="cpu")
    u = load_model(tmp_path / "u")
    assert u.num_classes is None and u.class_names is None
    assert "class_names" not in load_checkpoint(tmp_path / "u").extra
    assert not any(k.startswith("class_embed") for k in u.net.state_dict())


def test_resuming_on_data_with_other_classes_is_refused_and_nothing_is_lost(tmp_path):
    def data(names):
        rng = np.random.default_rng(0)
        np.savez(tmp_path / "d.npz", images=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),
                 labels=np.arange(40) % 2, class_names=np.array(names))
    data(["cat", "dog"])
    cfg = override(preset("digits"), **{**TINY, "total_steps": 3}, num_classes=2, dataset="npz",
                   path=str(tmp_path / "d.npz"))
    train(cfg, tmp_path / "run", progress=False, device="cpu")
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    data(["dog", "cat"])  # the same two classes, in the other order: label 0 now means "dog"
    with pytest.raises(ValueError, match=r"classes 0 'dog', 1 'cat', but the run .* was trained on 0 'cat', 1 'dog'"):
        train(override(cfg, total_steps=6), tmp_path / "run", resume=True, progress=False, device="cpu")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before
    with pytest.raises(ValueError, match=r"classes 0 'dog', 1 'cat', but the model's are 0 'cat', 1 'dog'"):
        check_model_classes(load_model(tmp_path / "run"), dataset_for(cfg, "train"))  # the evaluations' twin check
    data(["cat", "dog"])  # the run's own classes: it resumes
    train(override(cfg, total_steps=6), tmp_path / "run", resume=True, progress=False, device="cpu")
    assert load_model(tmp_path / "run").class_names == ("cat", "dog")


def test_a_conditional_run_on_data_without_labels_fails_before_writing(tmp_path):
    np.savez(tmp_path / "u.npz", images=np.zeros((40, 8, 8), dtype=np.uint8))
    cfg = override(preset("digits"), **TINY, num_classes=2, dataset="npz", path=str(tmp_path / "u.npz"))
    with pytest.raises(ValueError, match="has no class labels"):
        train(cfg, tmp_path / "run", progress=False, device="cpu")
    assert not (tmp_path / "run").exists()


# --- loading and sampling a checkpoint ------------------------------------------------------------------------

def test_label_dropout_zero_refuses_unconditional_sampling_and_guidance_only(tmp_path):
    m = load_model(conditional_checkpoint(tmp_path / "ck", label_dropout=0.0))
    shape = (2, *m.sample_shape)
    x = sample(m, m.diffusion, shape, steps=3, classes=4)  # a class, unguided: meaningful
    assert torch.isfinite(x).all()
    for kwargs in ({}, {"classes": 4, "guidance": 1.0}):
        with pytest.raises(ConfigError, match=r"trained with train.label_dropout=0, so its 'no class' input never "
                                              r"learned p\(x\)"):
            sample(m, m.diffusion, shape, steps=3, **kwargs)
    with pytest.raises(ConfigError, match=r"ddpm sample --class K --guidance 0\) — what draws without a class"):
        sample(m, m.diffusion, shape, steps=3)
    m = load_model(conditional_checkpoint(tmp_path / "ok"))  # with label dropout: p(x) through "no class"
    assert torch.isfinite(sample(m, m.diffusion, shape, steps=3)).all()


def test_sample_command_with_a_class_by_name_and_guidance(tmp_path, capsys):
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    ck = conditional_checkpoint(tmp_path / "ck", names=names)
    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(ck), "--out", str(out), "--n", "3", "--steps", "4", "--class",
                 "seven", "--guidance", "2.0", "--no-progress"]) == 0
    with np.load(out / "samples.npz") as z:
        assert z["images"].shape == (3, 8, 8, 1) and z["labels"].tolist() == [7, 7, 7]
        assert z["class_names"].tolist() == names
    s = json.loads((out / "samples.json").read_text())
    assert s["classes"] == "seven" and s["guidance"] == 2.0
    by_index = tmp_path / "i"
    assert main(["sample", "--checkpoint", str(ck), "--out", str(by_index), "--n", "3", "--steps", "4", "--class",
                 "7", "--guidance", "2.0", "--no-progress"]) == 0
    with np.load(out / "samples.npz") as a, np.load(by_index / "samples.npz") as b:
        assert np.array_equal(a["images"], b["images"])
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(ck), "--out", str(tmp_path / "bad"), "--class", "ten",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--class 'ten' is not a class of this model; known classes (index name): 0 'zero', 1 'one'" in err
    assert "9 'nine'" in err and not (tmp_path / "bad").exists()
    assert main(["sample", "--checkpoint", str(ck), "--out", str(tmp_path / "bad"), "--guidance", "1",
                 "--no-progress"]) == 2
    assert "--guidance=1 needs a class to guide towards" in capsys.readouterr().err


def test_sample_command_class_all_draws_a_row_per_class(tmp_path):
    ck = conditional_checkpoint(tmp_path / "ck")
    out = tmp_path / "all"
    assert main(["sample", "--checkpoint", str(ck), "--out", str(out), "--n", "4", "--steps", "3", "--class", "all",
                 "--guidance", "1", "--batch-size", "16", "--no-progress"]) == 0
    with np.load(out / "samples.npz") as z:
        assert z["images"].shape == (40, 8, 8, 1)
        assert z["labels"].tolist() == [k for k in range(10) for _ in range(4)]
    # 10 rows of 4 tiles (grid 100 / 10 classes = 10 per row at most; --n 4 of each): (4·9 + 1, 10·9 + 1) · 8
    assert png_size(out / "samples.png") == (37 * 8, 91 * 8)
    # each sample is seeded by its global index, whatever the batch: class 3's samples are those of --class 3
    one = tmp_path / "one"
    assert main(["sample", "--checkpoint", str(ck), "--out", str(one), "--n", "16", "--steps", "3", "--class", "3",
                 "--guidance", "1", "--no-progress"]) == 0
    with np.load(out / "samples.npz") as a, np.load(one / "samples.npz") as b:
        diff = np.abs(a["images"][12:16].astype(int) - b["images"][12:16].astype(int))
        assert diff.max() <= 1


def test_unconditional_model_refuses_a_class(tmp_path, capsys):
    from _eval_tiny import make_checkpoint

    ck = make_checkpoint(tmp_path / "u")
    assert main(["sample", "--checkpoint", str(ck), "--out", str(tmp_path / "s"), "--class", "3",
                 "--no-progress"]) == 2
    assert "--class given, but this model is unconditional" in capsys.readouterr().err


def test_nll_of_a_conditional_model_is_the_conditional_bound(tmp_path, capsys):
    from ddpm.data import dataset_for
    from ddpm.evaluation.nll import bound_totals
    from ddpm.sampling import Conditioned

    ck = conditional_checkpoint(tmp_path / "ck")
    out = tmp_path / "nll"
    assert main(["nll", "--checkpoint", str(ck), "--out", str(out), "--limit", "4", "--t-batch", "7",
                 "--no-progress"]) == 0
    r = json.loads((out / "nll.json").read_text())
    assert r["conditional"] is True
    assert "conditional NLL (each image under its own label)" in capsys.readouterr().out
    m = load_model(ck)
    test = dataset_for(m.config, "test")
    labels = test.labels
    # image by image under its own label, by hand: the same per-image bounds
    for i in range(2):
        alone = bound_totals(Conditioned(m, torch.tensor([int(labels[i])])), m.diffusion, test, [i], seed=0,
                             t_per_batch=3)
        per_image = [float(row["total_bits_per_dim"]) for row in _csv(out / "per_image.csv")]
        assert abs(alone.total_bpd.item() - per_image[i]) < 1e-4
    null = bound_totals(m, m.diffusion, test, [0], seed=0, t_per_batch=3)  # "no class": another number
    assert abs(null.total_bpd.item() - per_image[0]) > 1e-4


def _csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_analytic_estimate_of_a_conditional_model_holds_both_tables(tmp_path):
    from ddpm.checkpoint import read_safetensors_header
    from ddpm.data import dataset_for
    from ddpm.evaluation.analytic_variance import analytic_gamma, estimate_paths, read_estimate

    ck = conditional_checkpoint(tmp_path / "ck")
    m = load_model(ck)
    train_split = dataset_for(m.config, "train")
    gamma = analytic_gamma(ck, m, train_split, n_images=6, batch_size=4)
    tensors, _ = estimate_paths(ck, m.weights)
    assert set(read_safetensors_header(tensors)) == {"gamma", "gamma_null"}
    null = read_estimate(ck, m, conditional=False)[0]
    assert torch.equal(read_estimate(ck, m)[0], gamma) and not torch.equal(gamma, null)
    assert gamma.shape == null.shape == (m.diffusion.T,)
    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(ck), "--out", str(out), "--n", "2", "--sampler", "analytic-ddpm",
                 "--steps", "4", "--class", "2", "--guidance", "1", "--no-progress"]) == 0
    assert main(["sample", "--checkpoint", str(ck), "--out", str(tmp_path / "u"), "--n", "2", "--sampler",
                 "analytic-ddim", "--steps", "4", "--no-progress"]) == 0
