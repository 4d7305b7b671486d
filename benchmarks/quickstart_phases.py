"""Where the quickstart's time goes: each phase's seconds, and a profile of the digits network's steps.

    python benchmarks/quickstart_phases.py --out runs/quickstart-timed     # runs `ddpm quickstart` with its defaults
    python benchmarks/quickstart_phases.py --profile                       # profiles one step of each phase only

The first form runs the quickstart as a user would (its defaults, a fresh folder) and prints the seconds of each
phase from its results.json beside the machine. ``--profile`` times the network call each phase is made of — a
training step (batch 128, forward, backward and Adam), a sampling forward (batch 256) and a bound forward
(64 images × 25 values of t) — in float32 and under bf16 autocast, and prints torch.profiler's top operators of
the training step, so that the levers can be read off (which operators, how much each precision saves).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ddpm.config import preset
from ddpm.diffusion import GaussianDiffusion
from ddpm.nets import count_parameters, network_for
from ddpm.processes import machine_line
from ddpm.quickstart import QuickstartOptions, quickstart


def run_quickstart(out: Path) -> None:
    """The quickstart with its defaults; prints the phases."""
    tick = time.perf_counter()
    quickstart(out, QuickstartOptions(progress=False))
    total = time.perf_counter() - tick
    r = json.loads((out / "results.json").read_text())
    print(machine_line())
    print(f"quickstart, defaults: {total:.0f} s in all ({total / 60:.1f} min)")
    for phase, seconds in r["seconds"].items():
        print(f"  {phase:<12} {seconds:7.1f} s  {100 * seconds / total:4.1f}%")
    print(f"  {'other':<12} {total - sum(r['seconds'].values()):7.1f} s  (report figures, loading, writing)")
    print(f"test bound {r['test_nll_bits_per_dim']:.3f} ± {r['test_nll_stderr']:.3f} bits/dim; ancestral FD "
          f"{r['ancestral']['fd']:.2f} (real {r['ancestral']['fd_real_vs_real']:.2f}); {r['few_step']['sampler']} "
          f"{r['few_step']['steps']} steps FD {r['few_step']['fd']:.2f}")


def best_of(fn, repeats: int) -> float:
    """The fastest of ``repeats`` calls (after one warm-up call), in seconds."""
    fn()
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tick)
    return min(times)


def profile(repeats: int) -> None:
    """Times each phase's network call in float32 and bf16; the training step's top operators."""
    cfg = preset("digits")
    torch.manual_seed(0)
    net = network_for(cfg)
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.train.lr)
    shape = cfg.model.sample_shape
    x_train, x_sample, x_bound = (torch.randn(b, *shape) for b in (cfg.train.batch_size, 256, 64 * 25))
    t_train = torch.randint(0, diffusion.T, (len(x_train),))

    def train_step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion.training_losses(net, x_train, t_train, torch.randn_like(x_train)).loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward(x: torch.Tensor, bf16: bool) -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            net(x, torch.full((len(x),), 500))

    print(machine_line())
    print(f"digits network: {count_parameters(net):,} parameters, input {tuple(shape)}")
    print("| phase | one call | float32 (ms) | bf16 autocast (ms) | bf16 speed-up | calls in the quickstart |")
    print("|---|---|---:|---:|---:|---:|")
    # per quickstart: every training step; T sampling calls of 256; 180 test images × T values of t, 1600 a call
    calls = {"training step": cfg.train.total_steps, "sampling forward": diffusion.T,
             "bound forward": 180 * diffusion.T // len(x_bound)}
    for phase, what, fn in (
        ("training step", f"batch {len(x_train)}, fwd+bwd+Adam", train_step),
        ("sampling forward", "batch 256", lambda bf16: forward(x_sample, bf16)),
        ("bound forward", "64 images × 25 t", lambda bf16: forward(x_bound, bf16)),
    ):
        f32, b16 = (best_of(lambda fn=fn, bf16=bf16: fn(bf16), repeats) for bf16 in (False, True))
        print(f"| {phase} | {what} | {1e3 * f32:.1f} | {1e3 * b16:.1f} | {f32 / b16:.2f}× | {calls[phase]} "
              f"(≈ {calls[phase] * f32:.0f} s in float32) |")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            train_step(False)
    print("\ntraining step, float32, top operators by self CPU time (3 steps):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="a fresh folder for the quickstart's run")
    p.add_argument("--profile", action="store_true", help="profile the phases' network calls instead")
    p.add_argument("--repeats", type=int, default=10, help="best of this many calls per measurement")
    args = p.parse_args(argv)
    if args.profile:
        profile(args.repeats)
    elif args.out:
        run_quickstart(Path(args.out))
    else:
        p.error("give --out DIR (run the quickstart) or --profile")


if __name__ == "__main__":
    main()
