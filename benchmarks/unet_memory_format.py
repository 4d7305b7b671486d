"""The U-Net's convolution weights in the channels-last memory format, against contiguous weights.

Activations run channels-last either way (``UNet.forward``); this measures what storing the 4-D weights
channels-last too adds: with contiguous weights oneDNN reorders every weight on every call, a cost that
matters when the activations are small (8×8 digits) and little when they are large (32×32 CIFAR-10).
For the ``digits`` preset (the quickstart's phases: a training step at batch 128, a sampling forward at
batch 256, a bound forward of 1,600 images) and the ``cifar10`` preset (a training step and a sampling
forward at batch 8), both layouts of the same weights alternate call by call (ABBA order, so background
load hits both alike); it prints the median and minimum milliseconds and the speed-up.

    python benchmarks/unet_memory_format.py            # about 1 minute on 2 idle cores
    python benchmarks/unet_memory_format.py --quick    # about 50 seconds

Not taken (benchmarks/README.md): the gain is in the digits' sampling and bound forwards only (~1.15×, ~5% of the
quickstart), and a different weight layout changes the network's outputs at the rounding level, so a compressed
file (``ddpm compress``, which needs them bit-identical) written before would no longer decode.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch

from ddpm.config import preset
from ddpm.diffusion import GaussianDiffusion
from ddpm.nets import network_for
from ddpm.processes import machine_line


def with_weights(net: torch.nn.Module, fmt: torch.memory_format) -> torch.nn.Module:
    """A copy of ``net`` whose 4-D parameters are stored in ``fmt`` (values unchanged)."""
    out = copy.deepcopy(net)
    for p in out.parameters():
        if p.dim() == 4:
            p.data = p.data.contiguous(memory_format=fmt)
    return out


def phase_calls(name: str, batch: int, net: torch.nn.Module, train: bool) -> Callable[[], None]:
    """One call of a phase on ``net``: a training step (forward, backward, Adam) or a no-grad forward."""
    cfg = preset(name)
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *cfg.model.sample_shape, generator=gen)
    t = torch.randint(0, diffusion.T, (batch,), generator=gen)
    noise = torch.randn(x.shape, generator=gen)
    if not train:
        def forward() -> None:
            net.eval()
            with torch.inference_mode():
                net(x, t)
        return forward
    opt = torch.optim.Adam(net.parameters(), lr=cfg.train.lr)

    def step() -> None:
        net.train()
        loss = diffusion.training_losses(net, x, t, noise).loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def race(a: Callable[[], None], b: Callable[[], None], warmup: int, iters: int) -> tuple[list[float], list[float]]:
    """Seconds per call of ``a`` and ``b``, alternating ABBA."""
    for _ in range(warmup):
        a()
        b()
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(iters):
        order = ((0, a), (1, b)) if i % 2 == 0 else ((1, b), (0, a))
        for k, fn in order:
            tick = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - tick)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer iterations (noisier)")
    args = ap.parse_args()
    iters = 8 if args.quick else 30
    cases = [("digits", "training step", 128, True), ("digits", "sampling forward", 256, False),
             ("digits", "bound forward", 1600, False), ("cifar10", "training step", 8, True),
             ("cifar10", "sampling forward", 8, False)]
    print(machine_line())
    print("| preset | call | batch | contiguous weights (ms, median / min) | channels-last weights (ms) | speed-up "
          "(medians) |")
    print("|---|---|---|---|---|---|")
    nets: dict[str, torch.nn.Module] = {}
    for name, what, batch, train in cases:
        if name not in nets:
            torch.manual_seed(0)
            nets[name] = network_for(preset(name))
        base = nets[name]
        # fresh copies per case, so that each training step starts from the same weights and its own Adam
        a = phase_calls(name, batch, with_weights(base, torch.contiguous_format), train)
        b = phase_calls(name, batch, with_weights(base, torch.channels_last), train)
        n = max(4, iters // 4) if name == "cifar10" or batch >= 1600 else iters
        ta, tb = race(a, b, warmup=2, iters=n)
        ma, mb = statistics.median(ta), statistics.median(tb)
        print(f"| {name} | {what} | {batch} | {1e3 * ma:.1f} / {1e3 * min(ta):.1f} | {1e3 * mb:.1f} / "
              f"{1e3 * min(tb):.1f} | {ma / mb:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
