"""A practitioner's journey from a trained model to samples and figures, through the command line.

``ddpm sample`` with every registered sampler (sample i the same whatever --batch-size or --n), what its files
hold and keep, options that would silently do nothing, and the sampler-comparison figure's labels.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from _eval_tiny import make_checkpoint, one_thread  # noqa: F401 (autouse fixture)
from ddpm.cli import main
from ddpm.config import ConfigError
from ddpm.evaluation import figures
from ddpm.evaluation.samples import SampleOptions, SamplerSpec, generate
from ddpm.loading import load_model
from ddpm.sampling import SAMPLERS


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = make_checkpoint(tmp_path_factory.mktemp("journey") / "ckpt")
    assert main(["analytic-variance", "--checkpoint", str(path), "--n-images", "8"]) == 0
    return path


def _images(folder, name="samples"):
    with np.load(folder / f"{name}.npz") as z:
        return z["images"]


def _sample(ckpt, out, *extra):
    return main(["sample", "--checkpoint", str(ckpt), "--out", str(out), "--no-progress", *extra])


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_sample_i_does_not_depend_on_the_batch_size_or_on_n(ckpt, tmp_path, sampler):
    """Every registered sampler: 5 samples in one batch, in batches of 2, and the first 3 of them alone agree."""
    args = ["--sampler", sampler, "--steps", "4"]
    assert _sample(ckpt, tmp_path / "one", "--n", "5", "--batch-size", "5", *args) == 0
    assert _sample(ckpt, tmp_path / "two", "--n", "5", "--batch-size", "2", *args) == 0
    assert _sample(ckpt, tmp_path / "few", "--n", "3", "--batch-size", "3", *args) == 0
    one, two, few = (_images(tmp_path / d).astype(int) for d in ("one", "two", "few"))
    assert one.shape == (5, 8, 8, 1) and one.std() > 0
    assert np.abs(one - two).max() <= 1 and np.abs(one[:3] - few).max() <= 1


def test_spacing_without_steps_is_refused_not_ignored(ckpt, tmp_path, capsys):
    """--spacing chooses the steps of a shorter chain; without --steps every one of the T steps runs, so the
    option would do nothing while samples.json recorded it as the spacing used."""
    with pytest.raises(ConfigError, match="--spacing logsnr chooses which steps a shorter chain takes"):
        SamplerSpec(sampler="ddim", spacing="logsnr")
    SamplerSpec(sampler="ddim", steps=5, spacing="logsnr")  # with --steps it applies
    assert _sample(ckpt, tmp_path / "s", "--n", "2", "--sampler", "ancestral", "--spacing", "quadratic") == 2
    assert "give --steps K" in capsys.readouterr().err and not (tmp_path / "s").exists()


@pytest.mark.parametrize("name", ["args", "config"])
def test_name_cannot_be_a_file_the_command_writes_itself(ckpt, tmp_path, capsys, name):
    """--name args wrote args.npz and the samples' record args.json, which the run info then replaced."""
    with pytest.raises(ConfigError, match=f"--name {name!r} would share {name}.json"):
        SampleOptions(name=name)
    assert _sample(ckpt, tmp_path / "s", "--n", "2", "--steps", "2", "--name", name) == 2
    assert f"{name}.json" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_each_samples_json_says_how_to_draw_its_samples_again(ckpt, tmp_path):
    """Two --name runs in one folder share args.json (the last run's): each <name>.json keeps its own seed,
    checkpoint, weights and clipping, enough to draw the same samples again."""
    out = tmp_path / "s"
    assert _sample(ckpt, out, "--n", "3", "--steps", "3", "--sampler", "ddim", "--seed", "5", "--weights", "model",
                   "--no-clip", "--name", "first") == 0
    assert _sample(ckpt, out, "--n", "3", "--steps", "3", "--name", "second") == 0
    info = json.loads((out / "first.json").read_text())
    assert (info["seed"], info["weights"], info["clip_denoised"]) == (5, "model", False)
    assert info["checkpoint"] == str(ckpt) and info["checkpoint_step"] == load_model(ckpt).step
    m = load_model(info["checkpoint"], info["weights"])
    spec = SamplerSpec(info["sampler"], info["steps"], info["eta"], info["clip_denoised"], info["spacing"])
    again = generate(m, m.diffusion, m.sample_shape, spec, info["seed"], range(info["n"]))
    assert np.abs(again.astype(int) - _images(out, "first")).max() <= 1


def test_generate_draws_sample_i_from_stream_i_for_any_indices(ckpt):
    """Indices that are not consecutive (say, samples 5 and 2 of a run, to look at them again) are those samples."""
    m = load_model(ckpt)
    spec = SamplerSpec(sampler="ddim", steps=3)
    whole = generate(m, m.diffusion, m.sample_shape, spec, 0, range(6), batch_size=6).astype(int)
    picked = generate(m, m.diffusion, m.sample_shape, spec, 0, [5, 2], batch_size=2).astype(int)
    assert np.abs(picked - whole[[5, 2]]).max() <= 1


def test_guidance_without_a_class_says_a_conditional_model_is_needed():
    with pytest.raises(ConfigError, match=r"--guidance=2 needs a class to guide towards: give --class .*"
                                          r"class-conditional model"):
        SampleOptions(guidance=2.0)


def test_sampler_comparison_draws_one_line_per_sampler_and_spacing(tmp_path, monkeypatch):
    """DDIM on uniform and on quadratic steps are two curves with their own labels, not one zig-zag labelled
    with the first run's spacing."""
    drawn, close = [], figures.plt.close
    monkeypatch.setattr(figures.plt, "close", drawn.append)
    runs = [figures.SamplerRun("ddim", 10, 30.0, "uniform"), figures.SamplerRun("ddim", 10, 20.0, "quadratic"),
            figures.SamplerRun("ddim", 20, 25.0, "uniform"), figures.SamplerRun("ddim", 20, 18.0, "quadratic")]
    figures.plot_sampler_comparison(tmp_path / "c.png", runs, None, 10.0, 1.0)
    ax = drawn[0].axes[0]
    lines = {ln.get_label(): ln.get_ydata().tolist() for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    assert lines == {"ddim (uniform)": [30.0, 25.0], "ddim (quadratic)": [20.0, 18.0]}
    for fig in drawn:
        close(fig)


def test_a_fig7_or_interpolation_row_is_a_function_of_what_it_shows(ckpt):
    """Fig. 7's row of (test image, t) and an interpolation row of (pair, t) are drawn the same whichever other
    images, times or pairs come with them: asking for --share-t 10 (or --t 10) alone redraws that row of the full
    figure. They were seeded by their position in the grid, so they changed with the other rows requested."""
    import torch

    from ddpm.evaluation.interpolation import interpolation_rows
    from ddpm.evaluation.progressive import shared_xt_rows

    m = load_model(ckpt)
    images = torch.linspace(-1, 1, 3 * 64).reshape(3, 1, 8, 8)
    full = shared_xt_rows(m, m.diffusion, images[:2], [20, 10], 2, 0, range(4), image_indices=[4, 9])
    alone = shared_xt_rows(m, m.diffusion, images[1:2], [10], 2, 0, range(1), image_indices=[9])
    torch.testing.assert_close(full[3], alone[0])  # image 9 at t = 10
    assert not torch.allclose(full[1], full[3])  # other images or times are other draws
    pairs = torch.stack([images[:2], images[1:]])  # (2, 2, C, H, W)
    full = interpolation_rows(m, m.diffusion, pairs, [15, 10], [0, 0.5, 1], 0, range(4), pair_indices=[(0, 1), (1, 2)])
    alone = interpolation_rows(m, m.diffusion, pairs[1:], [10], [0, 0.5, 1], 0, range(1), pair_indices=[(1, 2)])
    torch.testing.assert_close(full[3], alone[0])


def test_a_fig7_rows_first_samples_do_not_change_with_how_many_it_draws(ckpt):
    """--share-samples 2 and 4 give the same first two samples of a row (one stream per sample; they shared one
    stream, so a third sample changed the first two)."""
    import torch

    from ddpm.evaluation.progressive import shared_xt_rows

    m = load_model(ckpt)
    image = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    two = shared_xt_rows(m, m.diffusion, image, [10], 2, 0, range(1), image_indices=[3])[0]
    four = shared_xt_rows(m, m.diffusion, image, [10], 4, 0, range(1), image_indices=[3])[0]
    torch.testing.assert_close(four[:4], two)  # x0, x_t and samples 0, 1
    assert not torch.allclose(four[2], four[3])  # samples are different draws from the one x_t
