"""How sampling and training time grow with image size and T (the reviewers' questions), on this machine.

    python benchmarks/bench_scaling.py [--device cpu|cuda] [--sizes 32,64,128,256] [--reps 3]

For each size the network is the paper's U-Net for it (the CIFAR-10 model at 32², the 256² model's layout —
128 channels, ×(1,1,2,2,4,4), attention at 16² — at 64², 128² and 256²). Measured: parameters, one reverse step
(a forward pass at batch 1, no gradient), one training step (forward, backward, Adam at batch 1) and the full
sampling time that follows for T = 1000 (and T = 100 respaced / DDIM), since Algorithm 2 is T forward passes.
The `digits` and `cifar10` presets' training steps at their own batch size are measured as well.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from ddpm.config import PRESETS, UNetConfig
from ddpm.nets import build_model, count_parameters
from ddpm.processes import machine_line


def network_for(size: int) -> UNetConfig:
    """The paper's U-Net at a given image size."""
    if size == 32:
        return PRESETS["cifar10"].model  # type: ignore[return-value]
    return replace(PRESETS["celebahq256"].model, image_size=size)  # type: ignore[arg-type]


def best_time(fn, reps: int) -> float:
    """Best wall time of ``reps`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def step_times(cfg: UNetConfig, batch: int, reps: int, device: torch.device) -> tuple[int, float, float]:
    """(parameters, seconds per reverse step at batch 1, seconds per training step at ``batch``)."""
    torch.manual_seed(0)
    net = build_model(cfg).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x1 = torch.randn(1, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)
    xb = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)
    t1 = torch.tensor([500], device=device)
    tb = torch.randint(0, 1000, (batch,), device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def reverse_step():
        with torch.no_grad():
            net.eval()(x1, t1)
        sync()

    def train_step():
        net.train()
        loss = (net(xb, tb) - xb).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()

    return count_parameters(net), best_time(reverse_step, reps), best_time(train_step, reps)


def train_flops_per_image(cfg: UNetConfig) -> float:
    """Convolution/matmul FLOPs of one training image (forward + backward), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    net = build_model(cfg)
    x = torch.randn(1, cfg.in_channels, cfg.image_size, cfg.image_size)
    with FlopCounterMode(display=False) as counter:
        net(x, torch.tensor([500])).square().mean().backward()
    return float(counter.get_total_flops())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default="32,64,128,256")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    print(f"{machine_line()}, device {device}, best of {args.reps}\n")
    print("| image size | network | parameters | reverse step, batch 1 (s) | 1000-step sample (min) | "
          "100-step sample (min) | training step, batch 1 (s) | training GFLOP/image |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        cfg = network_for(size)
        params, step_s, train_s = step_times(cfg, 1, args.reps, device)
        name = "CIFAR-10 U-Net" if size == 32 else "256² U-Net layout"
        print(f"| {size}² | {name} | {params / 1e6:.1f}M | {step_s:.3f} | {1000 * step_s / 60:.1f} | "
              f"{100 * step_s / 60:.2f} | {train_s:.2f} | {train_flops_per_image(cfg) / 1e9:.1f} |", flush=True)
    print("\n| preset | parameters | batch | training step (s) | img/s |")
    print("|---|---:|---:|---:|---:|")
    for name, batch in (("digits", 128), ("cifar10", 8)):
        cfg = PRESETS[name].model
        params, _, train_s = step_times(cfg, batch, args.reps, device)  # type: ignore[arg-type]
        print(f"| {name} | {params / 1e6:.2f}M | {batch} | {train_s:.3f} | {batch / train_s:.1f} |", flush=True)


if __name__ == "__main__":
    main()
