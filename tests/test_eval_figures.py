"""ddpm progressive (Figs. 6-7) and interpolate (Fig. 8): shapes, PNG sizes, per-row seeds; --help of every command;
the report's plots (the column's width, titled panels) and figure markup."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _eval_tiny import make_checkpoint, one_thread, png_size  # noqa: F401 (autouse fixture)
from ddpm.cli import build_parser, main
from ddpm.evaluation import figures
from ddpm.evaluation.figures import plot_loss_curve, plot_rate_distortion
from ddpm.evaluation.interpolation import choose_pairs, default_t, lambda_grid
from ddpm.evaluation.progressive import evenly_spaced_times, progressive_x0, quarter_times
from ddpm.evaluation.report import COLUMN_PX, Figure, write_report
from ddpm.images import save_image_grid
from ddpm.loading import load_model
from ddpm.schedules import spaced_steps

COMMANDS = ("nll", "rate-distortion", "sample", "progressive", "interpolate", "fid")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("fig") / "ckpt")


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: ddpm {command}" in text and ("--checkpoint" in text)


def test_time_grids():
    assert evenly_spaced_times(1000, 5) == [1000, 750, 500, 250, 1]  # the respacing rule: spaced_steps
    assert evenly_spaced_times(1000, 5) == sorted(spaced_steps(1000, 5), reverse=True)
    assert quarter_times(1000) == [1000, 750, 500, 250]
    assert default_t(1000) == 500 and default_t(20) == 10
    assert lambda_grid(3) == [0.0, 0.5, 1.0]
    assert choose_pairs(10, 0, 0, (1, 2, 3, 4)) == [(1, 2), (3, 4)]
    assert all(a != b for a, b in choose_pairs(10, 5, 0))
    with pytest.raises(ValueError, match="even number"):
        choose_pairs(10, 0, 0, (1, 2, 3))


def test_progressive_rows_are_seeded_by_row(ckpt):
    m = load_model(ckpt)
    whole = progressive_x0(m, m.diffusion, (1, 8, 8), [20, 10, 1], 0, range(0, 3))
    parts = torch.cat([progressive_x0(m, m.diffusion, (1, 8, 8), [20, 10, 1], 0, r) for r in (range(1), range(1, 3))])
    assert whole.shape == (3, 3, 1, 8, 8)
    torch.testing.assert_close(whole, parts, rtol=1e-5, atol=1e-5)


def test_progressive_command(ckpt, tmp_path):
    out = tmp_path / "p"
    assert main(["progressive", "--checkpoint", str(ckpt), "--out", str(out), "--rows", "3", "--at", "20,15,5,1",
                 "--share-t", "20,10", "--share-samples", "2", "--images", "4,9", "--no-progress"]) == 0
    with np.load(out / "progressive.npz") as z:
        assert z["pred_x0"].shape == (3, 4, 8, 8, 1) and z["pred_x0"].dtype == np.uint8
        assert z["at"].tolist() == [20, 15, 5, 1]
    with np.load(out / "shared_xt.npz") as z:
        grid = z["images"]
        assert grid.shape == (4, 4, 8, 8, 1)  # (2 images × 2 t) rows of x0 | x_t | 2 samples
        assert z["t"].tolist() == [20, 10] and z["image_indices"].tolist() == [4, 9]
    assert (grid[0, 0] == grid[1, 0]).all()  # the same x0 in both rows of an image
    # a tile is 8 px + 1 px pad, one more pad at the edge, all upscaled 8×: (4 · 9 + 1) · 8 = 296
    assert png_size(out / "progressive.png") == (296, (3 * 9 + 1) * 8)  # 3 rows of 4
    assert png_size(out / "shared_xt.png") == (296, 296)  # 4 rows of 4
    assert json.loads((out / "progressive.json").read_text())["share_t"] == [20, 10]
    # --limit caps the rows of both figures
    assert main(["progressive", "--checkpoint", str(ckpt), "--out", str(tmp_path / "l"), "--limit", "1",
                 "--columns", "3", "--no-progress"]) == 0
    with np.load(tmp_path / "l" / "progressive.npz") as z, np.load(tmp_path / "l" / "shared_xt.npz") as w:
        assert z["pred_x0"].shape == (1, 3, 8, 8, 1) and w["images"].shape == (4, 5, 8, 8, 1)


def test_interpolate_command(ckpt, tmp_path):
    out = tmp_path / "i"
    assert main(["interpolate", "--checkpoint", str(ckpt), "--out", str(out), "--indices", "0,5", "--t", "10,4",
                 "--lambdas", "5", "--no-progress"]) == 0
    with np.load(out / "interpolation.npz") as z:
        images, sources = z["images"], z["sources"]
        assert images.shape == (2, 5, 8, 8, 1) and sources.shape == (2, 2, 8, 8, 1)
        assert z["t"].tolist() == [10, 4] and z["pairs"].tolist() == [[0, 5], [0, 5]]
        assert z["lambdas"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert png_size(out / "interpolation.png") == ((7 * 9 + 1) * 8, (2 * 9 + 1) * 8)  # 2 rows of 7 tiles
    assert json.loads((out / "interpolation.json").read_text())["pairs"] == [[0, 5]]


def test_report_plots_are_the_column_wide_and_the_rate_distortion_panels_titled(tmp_path, monkeypatch):
    drawn, close = [], figures.plt.close
    monkeypatch.setattr(figures.plt, "close", drawn.append)  # keep the figures to read their titles
    t = list(range(1, 21))
    rd = plot_rate_distortion(tmp_path / "rd.png", t, [1 / v for v in t], [100 - v for v in t], 20)
    assert [ax.get_title()[:3] for ax in drawn[0].axes] == ["(a)", "(b)", "(c)"]
    width, height = png_size(rd)
    assert width == COLUMN_PX and 300 <= height < width / 2  # three panels side by side, tall enough to read
    log = tmp_path / "log.csv"
    log.write_text("step,loss,loss_t_q1,loss_t_q2,loss_t_q3,loss_t_q4\n50,1,2,1,.5,.2\n100,.5,1,.5,.2,.1\n")
    assert png_size(plot_loss_curve(tmp_path / "loss.png", log))[0] == COLUMN_PX
    for fig in drawn:
        close(fig)


def test_report_figure_markup(tmp_path):
    grid = save_image_grid(tmp_path / "grid.png", np.zeros((4, 8, 8, 1), np.uint8), nrow=2, scale=3)  # 19 px × 3
    page = write_report(tmp_path / "r.html", "t", [("a", "1")], [Figure(grid.name, "as before"),  # positional, default
                                                                  Figure(grid.name, "pixel art", "pixels", 3)])
    text = page.read_text()
    assert 'name="viewport"' in text and "http" not in text  # self-contained, sized for phones
    assert '<figure class="card">' in text and text.count('width="57" height="57"') == 2
    assert 'style="--w: 19px; --s: 3"' in text  # drawn (57 / 3) × k px wide, k ≥ 3
    with pytest.raises(ValueError, match="not made of 2×2 pixels"):
        write_report(tmp_path / "r.html", "t", [], [Figure(grid.name, "odd", "pixels", 2)])
    with pytest.raises(ValueError, match="layout"):
        Figure(grid.name, "x", "thumbnail")
