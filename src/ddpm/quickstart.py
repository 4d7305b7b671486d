"""The main job on the embedded default: train the `digits` preset, sample, evaluate, and write a report.

Composed from the library: ``train`` (Algorithm 1), ``sample`` (Algorithm 2 and DDIM), the full variational
bound (bits/dim and, from the same pass, rate–distortion), the digits quality metric, progressive generation,
and the HTML report.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import latest_checkpoint
from .config import RunConfig, check_int, check_seed, override, preset
from .data import dataset_for
from .diffusion import GaussianDiffusion
from .evaluation.digits_metric import DigitsQuality, evaluate_digits
from .evaluation.figures import plot_loss_curve, plot_rate_distortion
from .evaluation.nll import BoundTotals, bound_totals
from .evaluation.progressive import evenly_spaced_times, progressive_x0
from .evaluation.rate_distortion import rate_distortion_curve
from .evaluation.report import PIXEL_ART_SCALE, Figure, write_report
from .images import save_image_grid, to_display_uint8
from .outputs import OutputDir, OutputError, check_output_dir, write_text
from .processes import DEFAULT_DEVICE, check_device
from .rng import per_item
from .sampling import sample
from .train import Trainer


@dataclass(frozen=True)
class QuickstartOptions:
    """What the quickstart does; defaults fit 10 minutes on 2 CPU cores."""

    steps: int | None = None          # training steps (None: the preset's)
    n_samples: int = 256              # samples per sampler
    ddim_steps: int = 50              # DDIM steps (η = 0)
    nll_images: int | None = None     # test images for bits/dim (None: the whole test split)
    t_per_batch: int = 25             # bound terms evaluated per network call
    seed: int = 0                     # seeds training, sampling and evaluation
    progress: bool = True             # progress bars
    device: str = DEFAULT_DEVICE      # trains, samples and evaluates there (ddpm.processes.device_for)
    overwrite: bool = False           # replace an earlier quickstart in the same folder (its run is deleted)

    def __post_init__(self) -> None:
        # named as `ddpm quickstart` spells them (field names in brackets where they differ)
        if self.steps is not None:
            check_int("--steps", self.steps, 1)
        check_int("--samples (n_samples)", self.n_samples, 1)
        check_int("--ddim-steps", self.ddim_steps, 1, preset("digits").diffusion.T)  # a respacing of the T steps
        if self.nll_images is not None:
            check_int("--nll-images", self.nll_images, 1)
        check_int("t_per_batch", self.t_per_batch, 1)
        check_seed("--seed", self.seed)
        check_device(self.device)


@dataclass
class QuickstartResult:
    """The numbers the quickstart reports (also saved as results.json)."""

    out_dir: str
    train_steps: int
    train_seconds: float
    test_nll_bits_per_dim: float
    test_nll_stderr: float
    prior_bits_per_dim: float
    decoder_bits_per_dim: float
    ancestral: dict[str, Any]
    ddim: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def digits_config(options: QuickstartOptions) -> RunConfig:
    """The digits preset with the quickstart's seed and step budget."""
    changes: dict[str, Any] = {"seed": options.seed}
    if options.steps is not None:
        changes.update(total_steps=options.steps, checkpoint_every=options.steps)
    return override(preset("digits"), **changes)


def quickstart(out_dir: str | Path, options: QuickstartOptions = QuickstartOptions()) -> QuickstartResult:
    """Train → sample → evaluate → report, into ``out_dir``; returns the reported numbers."""
    cfg = digits_config(options)
    with OutputDir(_checked_out_dir(Path(out_dir), options.overwrite), "quickstart",
                   overwrite=options.overwrite) as out:
        return _quickstart(out, cfg, options)


def _checked_out_dir(out: Path, overwrite: bool) -> Path:
    """``out``, unless it holds someone else's files or an earlier quickstart that ``overwrite`` did not allow."""
    earlier = latest_checkpoint(out / "run")
    if earlier is not None and not overwrite:
        raise OutputError(f"{out} already holds a quickstart run ({earlier.name}); pass --overwrite to train afresh "
                          "into it (the earlier run is deleted) or --out DIR to keep it")
    return check_output_dir(out, "quickstart", overwrite)


def _quickstart(out: Path, cfg: RunConfig, options: QuickstartOptions) -> QuickstartResult:
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    if options.overwrite and (out / "run").exists():
        shutil.rmtree(out / "run")  # asked for with --overwrite
    trainer = Trainer(cfg, out / "run", device=options.device, progress=options.progress)
    trainer.run()
    timings["train_s"] = time.perf_counter() - tick
    net = trainer.ema_model()
    diffusion, device = trainer.diffusion, trainer.device
    shape = (options.n_samples, *cfg.model.sample_shape)

    tick = time.perf_counter()
    x_anc = sample(net, diffusion, shape, per_item(options.seed, "sample", range(options.n_samples)), device=device,
                   progress=options.progress).cpu()
    timings["ancestral_s"] = time.perf_counter() - tick
    tick = time.perf_counter()
    x_ddim = sample(net, diffusion, shape, per_item(options.seed, "sample", range(options.n_samples)), sampler="ddim",
                    steps=options.ddim_steps, device=device, progress=options.progress).cpu()
    timings["ddim_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    test = dataset_for(cfg, "test")
    n_test = len(test) if options.nll_images is None else min(options.nll_images, len(test))
    # one pass of the bound gives bits/dim (Table 1) and rate–distortion (Fig. 5)
    totals = bound_totals(net, diffusion, test, range(n_test), seed=options.seed, batch_size=64,
                          t_per_batch=options.t_per_batch, device=device, progress=options.progress)
    timings["nll_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    q_anc = evaluate_digits(x_anc, seed=options.seed)
    q_ddim = evaluate_digits(x_ddim, seed=options.seed)
    timings["quality_s"] = time.perf_counter() - tick

    x_test = torch.stack([test[i] for i in range(min(100, len(test)))])
    figures = _figures(out, net, diffusion, x_anc, x_ddim, x_test, totals, options, device)
    total = totals.total_bpd
    result = QuickstartResult(
        out_dir=str(out), train_steps=cfg.train.total_steps, train_seconds=timings["train_s"],
        test_nll_bits_per_dim=total.mean().item(),
        test_nll_stderr=(total.std() / math.sqrt(total.numel())).item() if total.numel() > 1 else math.nan,
        prior_bits_per_dim=totals.prior_bpd.mean().item(), decoder_bits_per_dim=totals.decoder_bpd.mean().item(),
        ancestral={"steps": diffusion.T, **_quality(q_anc)}, ddim={"steps": options.ddim_steps, **_quality(q_ddim)},
        seconds=timings,
    )
    write_text(out / "results.json", json.dumps(asdict(result), indent=2))
    write_report(out / "report.html", "DDPM quickstart: scikit-learn digits", _summary_rows(result), figures,
                 config=cfg.to_dict())
    return result


def _quality(q: DigitsQuality) -> dict[str, Any]:
    return {k: v for k, v in q.as_dict().items() if not isinstance(v, (list, dict))}


def _figures(out: Path, net: torch.nn.Module, diffusion: GaussianDiffusion, x_anc: torch.Tensor,
             x_ddim: torch.Tensor, x_test: torch.Tensor, totals: BoundTotals,
             options: QuickstartOptions, device: torch.device) -> list[Figure]:
    """The report's PNGs: sample grids, Fig. 6 strip, Fig. 5 curves and the loss curve."""
    at = evenly_spaced_times(diffusion.T, 10)
    strip = progressive_x0(net, diffusion, tuple(x_anc.shape[1:]), at, options.seed, range(8), device=device).cpu()
    points = rate_distortion_curve(totals)

    def grid(name: str, images: torch.Tensor, caption: str, nrow: int | None = None) -> Figure:
        # saved PIXEL_ART_SCALE× (a phone's size); the page enlarges it further on wider windows
        png = save_image_grid(out / name, to_display_uint8(images), nrow=nrow, scale=PIXEL_ART_SCALE)
        return Figure(png.name, caption, "pixels", PIXEL_ART_SCALE)

    return [
        grid("samples_ancestral.png", x_anc[:100],
             f"Algorithm 2 (ancestral, {diffusion.T} steps): {min(100, len(x_anc))} of {len(x_anc)} samples from the "
             "EMA weights", 10),
        grid("samples_ddim.png", x_ddim[:100], f"DDIM, {options.ddim_steps} steps, η = 0, the same per-sample seeds",
             10),
        grid("real_test.png", x_test, "Real test digits, for comparison", 10),
        grid("progressive.png", strip,
             "Progressive generation (Fig. 6): x̂₀ predicted at t = " + ", ".join(map(str, at)) + "; a row per sample"),
        Figure(plot_rate_distortion(out / "rate_distortion.png", [p.t for p in points],
                                    [p.rate_bits_per_dim for p in points], [p.rmse_0_255 for p in points],
                                    diffusion.T).name,
               "Rate–distortion on the test split (Fig. 5): bits received so far and RMSE of x̂₀", "wide"),
        Figure(plot_loss_curve(out / "loss.png", out / "run" / "log.csv").name,
               "Training loss (L_simple), overall and by quartile of t", "wide"),
    ]


def _summary_rows(r: QuickstartResult) -> list[tuple[str, str]]:
    a, d = r.ancestral, r.ddim
    return [
        ("training", f"{r.train_steps} steps in {r.train_seconds:.0f} s"),
        ("test NLL (full bound, Eq. 5)", f"{r.test_nll_bits_per_dim:.3f} ± {r.test_nll_stderr:.3f} bits/dim "
                                         f"(L_T {r.prior_bits_per_dim:.2e}, L_0 {r.decoder_bits_per_dim:.3f})"),
        (f"ancestral ({a['steps']} steps): Fréchet distance",
         f"{a['fd']:.2f} (real vs real: {a['fd_real_vs_real']:.2f})"),
        ("ancestral: classifier confidence", f"{a['confidence']:.3f} (real: {a['confidence_real']:.3f})"),
        (f"DDIM ({d['steps']} steps): Fréchet distance", f"{d['fd']:.2f} (real vs real: {d['fd_real_vs_real']:.2f})"),
        ("DDIM: classifier confidence", f"{d['confidence']:.3f} (real: {d['confidence_real']:.3f})"),
    ]
