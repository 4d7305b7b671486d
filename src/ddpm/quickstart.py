"""The main job on the embedded default: train the `digits` preset, sample, evaluate, and write a report.

Composed from the library: ``train`` (Algorithm 1), ``sample`` (Algorithm 2 and DDIM), the full variational
bound (bits/dim and, from the same pass, rate–distortion), the digits quality metric, progressive generation,
and the HTML report.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import latest_checkpoint
from .config import ConfigError, RunConfig, check_int, check_seed, override, preset, shown
from .data import dataset_for
from .diffusion import GaussianDiffusion
from .evaluation.common import mean_and_stderr
from .evaluation.digits_metric import DigitsQuality, evaluate_digits, real_fd_text
from .evaluation.figures import SamplerRun, plot_loss_curve, plot_rate_distortion, plot_sampler_comparison
from .evaluation.nll import BoundTotals, bound_totals
from .evaluation.progressive import evenly_spaced_times, progressive_x0
from .evaluation.rate_distortion import rate_distortion_curve
from .evaluation.report import PIXEL_ART_SCALE, Figure, write_report
from .images import save_image_grid, to_display_uint8
from .outputs import OutputDir, OutputError, check_output_dir, safe_name, write_npz, write_text
from .processes import DEFAULT_DEVICE, check_device, machine_info
from .rng import per_item
from .sampling import SAMPLERS, SamplerName, sample
from .schedules import SPACINGS, Spacing
from .train import Trainer

# the few-step samplers the report compares with Algorithm 2 (names of ddpm.sampling.SAMPLERS)
COMPARED: tuple[SamplerName, ...] = ("ddim", "dpm++2m", "sde-dpm++2m")


@dataclass(frozen=True)
class QuickstartOptions:
    """What the quickstart does; defaults fit 10 minutes on 2 CPU cores."""

    steps: int | None = None          # training steps (None: the preset's)
    n_samples: int = 256              # samples per sampler
    sampler: SamplerName = "sde-dpm++2m"  # the few-step sampler shown beside Algorithm 2 (ddpm.sampling.SAMPLERS)
    sampler_steps: int = 20           # its steps (network evaluations per sample)
    spacing: Spacing = "logsnr"       # which steps of the T (schedules.spaced_steps)
    compare_steps: tuple[int, ...] = (10, 20, 50)  # step counts at which each of COMPARED is measured
    nll_images: int | None = None     # test images for bits/dim (None: the whole test split)
    t_per_batch: int = 25             # bound terms evaluated per network call
    seed: int = 0                     # seeds training, sampling and evaluation
    progress: bool = True             # progress bars
    device: str = DEFAULT_DEVICE      # trains, samples and evaluates there (ddpm.processes.device_for)
    overwrite: bool = False           # replace an earlier quickstart in the same folder (its run is deleted)

    def __post_init__(self) -> None:
        # named as `ddpm quickstart` spells them (field names in brackets where they differ)
        T = preset("digits").diffusion.T
        if self.steps is not None:
            check_int("--steps", self.steps, 1)
        check_int("--samples (n_samples)", self.n_samples, 1)
        if self.sampler not in SAMPLERS or SAMPLERS[self.sampler].needs_gamma:
            usable = [k for k, v in SAMPLERS.items() if not v.needs_gamma]
            raise ConfigError(f"--sampler must be one of {', '.join(usable)} (the Analytic-DPM samplers need a Γ "
                              f"estimate: ddpm analytic-variance, then ddpm sample), got {shown(self.sampler)}")
        check_int("--sampler-steps", self.sampler_steps, 1, T)  # a respacing of the T steps
        if self.spacing not in SPACINGS:
            raise ConfigError(f"--spacing must be one of {', '.join(SPACINGS)}, got {shown(self.spacing)}")
        for k in self.compare_steps:
            check_int("--compare-steps", k, 1, T)
        if self.nll_images is not None:
            check_int("--nll-images", self.nll_images, 1)
        check_int("t_per_batch", self.t_per_batch, 1)
        check_seed("--seed", self.seed)
        check_device(self.device)

    def runs(self) -> list[tuple[SamplerName, int]]:
        """The few-step (sampler, steps) pairs drawn: the comparison's, then the shown sampler's if not among them."""
        pairs = [(name, k) for name in COMPARED for k in sorted(set(self.compare_steps))]
        return pairs + [(self.sampler, self.sampler_steps)] * ((self.sampler, self.sampler_steps) not in pairs)


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
    ancestral: dict[str, Any]         # Algorithm 2 on all T steps: its steps and sample quality
    few_step: dict[str, Any]          # the shown few-step sampler: name, steps, spacing and sample quality
    comparison: list[dict[str, Any]] = field(default_factory=list)  # every few-step run: sampler, steps, quality
    seconds: dict[str, float] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=machine_info)  # what the seconds were measured on


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

    def draw(sampler: SamplerName, steps: int | None) -> torch.Tensor:
        # the same per-sample seeds for every sampler: sample i starts from the same x_T everywhere
        n = options.n_samples
        return sample(net, diffusion, (n, *cfg.model.sample_shape), per_item(options.seed, "sample", range(n)),
                      sampler=sampler, steps=steps, spacing=options.spacing, device=device,
                      progress=options.progress).cpu()

    tick = time.perf_counter()
    x_anc = draw("ancestral", None)
    timings["ancestral_s"] = time.perf_counter() - tick
    few: dict[tuple[SamplerName, int], torch.Tensor] = {}
    tick = time.perf_counter()
    for sampler, steps in options.runs():
        few[sampler, steps] = draw(sampler, steps)
    timings["few_step_s"] = time.perf_counter() - tick
    x_few = few[options.sampler, options.sampler_steps]
    write_npz(out / "samples_ancestral.npz", images=to_display_uint8(x_anc))  # as `ddpm sample` writes them
    write_npz(out / f"samples_{safe_name(options.sampler)}.npz", images=to_display_uint8(x_few))

    tick = time.perf_counter()
    test = dataset_for(cfg, "test")
    n_test = len(test) if options.nll_images is None else min(options.nll_images, len(test))
    # one pass of the bound gives bits/dim (Table 1) and rate–distortion (Fig. 5)
    totals = bound_totals(net, diffusion, test, range(n_test), seed=options.seed, batch_size=64,
                          t_per_batch=options.t_per_batch, device=device, progress=options.progress)
    timings["nll_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    q_anc = _quality(evaluate_digits(x_anc, seed=options.seed))
    comparison = [{"sampler": sampler, "steps": steps, "spacing": options.spacing,
                   **_quality(evaluate_digits(x, seed=options.seed))} for (sampler, steps), x in few.items()]
    timings["quality_s"] = time.perf_counter() - tick

    x_test = torch.stack([test[i] for i in range(min(100, len(test)))])
    shown_run = next(c for c in comparison if (c["sampler"], c["steps"]) == (options.sampler, options.sampler_steps))
    figures = _figures(out, net, diffusion, x_anc, x_few, x_test, totals, options, device, q_anc, comparison)
    nll, nll_stderr = mean_and_stderr(totals.total_bpd)
    result = QuickstartResult(
        out_dir=str(out), train_steps=cfg.train.total_steps, train_seconds=timings["train_s"],
        test_nll_bits_per_dim=nll, test_nll_stderr=nll_stderr,
        prior_bits_per_dim=totals.prior_bpd.mean().item(), decoder_bits_per_dim=totals.decoder_bpd.mean().item(),
        ancestral={"steps": diffusion.T, **q_anc}, few_step=shown_run, comparison=comparison, seconds=timings,
    )
    write_text(out / "results.json", json.dumps(asdict(result), indent=2))
    write_report(out / "report.html", "DDPM quickstart: scikit-learn digits", _summary_rows(result), figures,
                 config=cfg.to_dict())
    return result


def _quality(q: DigitsQuality) -> dict[str, Any]:
    return {k: v for k, v in q.as_dict().items() if not isinstance(v, (list, dict))}


def _figures(out: Path, net: torch.nn.Module, diffusion: GaussianDiffusion, x_anc: torch.Tensor,
             x_few: torch.Tensor, x_test: torch.Tensor, totals: BoundTotals, options: QuickstartOptions,
             device: torch.device, q_anc: dict[str, Any], comparison: list[dict[str, Any]]) -> list[Figure]:
    """The report's PNGs: sample grids, Fig. 6 strip, Fig. 5 curves, the sampler comparison and the loss curve."""
    at = evenly_spaced_times(diffusion.T, 10)
    strip = progressive_x0(net, diffusion, tuple(x_anc.shape[1:]), at, options.seed, range(8), device=device).cpu()
    points = rate_distortion_curve(totals)
    name = safe_name(options.sampler)

    def grid(name: str, images: torch.Tensor, caption: str, nrow: int | None = None) -> Figure:
        # saved PIXEL_ART_SCALE× (a phone's size); the page enlarges it further on wider windows
        png = save_image_grid(out / name, to_display_uint8(images), nrow=nrow, scale=PIXEL_ART_SCALE)
        return Figure(png.name, caption, "pixels", PIXEL_ART_SCALE)

    figures = [
        grid("samples_ancestral.png", x_anc[:100],
             f"Algorithm 2 (ancestral, {diffusion.T} steps): {min(100, len(x_anc))} of {len(x_anc)} samples from the "
             "EMA weights", 10),
        grid(f"samples_{name}.png", x_few[:100], f"{options.sampler}, {options.sampler_steps} "
             f"{options.spacing}-spaced steps, the same per-sample seeds", 10),
        grid("real_test.png", x_test, "Real test digits, for comparison", 10),
        grid("progressive.png", strip,
             "Progressive generation (Fig. 6): x̂₀ predicted at t = " + ", ".join(map(str, at)) + "; a row per sample"),
        Figure(plot_rate_distortion(out / "rate_distortion.png", [p.t for p in points],
                                    [p.rate_bits_per_dim for p in points], [p.rmse_0_255 for p in points],
                                    diffusion.T).name,
               "Rate–distortion on the test split (Fig. 5): bits received so far and RMSE of x̂₀", "wide"),
    ]
    if comparison:
        runs = [SamplerRun(c["sampler"], c["steps"], c["fd"], c["spacing"]) for c in comparison]
        figures.append(Figure(plot_sampler_comparison(out / "samplers.png", runs, SamplerRun(
            "ancestral", diffusion.T, q_anc["fd"]), q_anc["fd_real_mean"], q_anc["fd_real_sd"]).name,
            f"Sample quality against network evaluations ({options.n_samples} samples each, the same seeds; one draw "
            f"each). The band: FDs of sets of {options.n_samples} real digits, mean ± sd; single FDs closer than "
            "its width are not told apart", "wide"))
    figures.append(Figure(plot_loss_curve(out / "loss.png", out / "run" / "log.csv").name,
                          "Training loss (L_simple), overall and by quartile of t", "wide"))
    return figures


def _summary_rows(r: QuickstartResult) -> list[tuple[str, str]]:
    a, f = r.ancestral, r.few_step
    rows = [
        ("training", f"{r.train_steps} steps in {r.train_seconds:.0f} s ({r.machine['cpu']}, "
                     f"{r.machine['torch_threads']} threads)"),
        ("test NLL (full bound, Eq. 5)", f"{r.test_nll_bits_per_dim:.3f} ± {r.test_nll_stderr:.3f} bits/dim "
                                         f"(L_T {r.prior_bits_per_dim:.2e}, L_0 {r.decoder_bits_per_dim:.3f})"),
        (f"ancestral ({a['steps']} steps): Fréchet distance",
         f"{a['fd']:.2f} ({real_fd_text(a)})"),
        ("ancestral: classifier confidence", f"{a['confidence']:.3f} (real: {a['confidence_real']:.3f})"),
        (f"{f['sampler']} ({f['steps']} steps): Fréchet distance",
         f"{f['fd']:.2f} ({real_fd_text(f)})"),
        (f"{f['sampler']}: classifier confidence", f"{f['confidence']:.3f} (real: {f['confidence_real']:.3f})"),
    ]
    return rows
