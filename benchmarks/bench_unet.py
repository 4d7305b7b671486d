"""Speed of our U-Net against diffusers' UNet2DModel of the same configuration, on the CPU, float32.

Both networks are the ``cifar10`` preset (35.7M parameters, dropout 0.1) with the same weights
(diffusers' random initialization, carried over with ``ddpm.interop.diffusers``). For a training
step (forward, backward, Adam) at batch 8 and 32 and a sampling forward at batch 32 it prints the
images/s of each, the ratio ours/diffusers, the FLOPs per image (counted with
``torch.utils.flop_counter.FlopCounterMode``) and the fraction of this machine's float32 matmul peak
(measured here on a 4096² matmul). The two models alternate iteration by iteration (ABBA order) so
that background load hits both alike; the medians and the minimums are both reported.

    python benchmarks/bench_unet.py            # about 2 minutes on 2 idle cores
    python benchmarks/bench_unet.py --quick    # about 20 seconds
    python benchmarks/bench_unet.py --variants ours,ours+compile,ours+bf16,diffusers,diffusers+compile

Variants: ``+compile`` runs the network through ``torch.compile`` (inductor; compile time excluded by the
warm-up), ``+bf16`` under ``torch.autocast("cpu", torch.bfloat16)`` (AVX512-BF16 / AMX where the CPU has
them; FLOPs and the peak fraction still refer to float32). Ratios are against eager float32 diffusers.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from ddpm.config import PRESETS
from ddpm.interop.diffusers import load_diffusers, unet_config_to_diffusers
from ddpm.nets.unet import UNet, count_parameters
from ddpm.processes import cpu_name


def _register_cpu_attention_flops() -> None:
    """FlopCounterMode knows the GPU attention kernels only: count the CPU flash kernel the same way."""
    fwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
    if fwd not in flop_counter.flop_registry:

        @flop_counter.register_flop_formula(fwd)
        def _fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    if bwd not in flop_counter.flop_registry:

        @flop_counter.register_flop_formula(bwd)
        def _bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def matmul_peak_flops(n: int, repeats: int) -> float:
    """Best float32 FLOP/s of an n×n by n×n matmul: the practical peak of this machine."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (convolutions, matmuls and attention)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def build_models(dropout: float) -> tuple[torch.nn.Module, torch.nn.Module, float]:
    """Our cifar10 U-Net and diffusers' UNet2DModel with the same weights, and their output difference."""
    import diffusers

    cfg = PRESETS["cifar10"].model
    kwargs = {k: v for k, v in unet_config_to_diffusers(cfg).items() if not k.startswith("_")}
    kwargs["dropout"] = dropout
    torch.manual_seed(0)
    theirs = diffusers.UNet2DModel(**kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        theirs.save_pretrained(os.path.join(tmp, "unet"))
        diffusers.DDPMScheduler().save_config(os.path.join(tmp, "scheduler"))
        imported = load_diffusers(tmp)
    ours = UNet(cfg)
    ours.load_state_dict(imported.state_dict)
    ours.eval(), theirs.eval()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([0, 999])
    with torch.no_grad():
        diff = (ours(x, t) - theirs(x, t).sample).abs().max().item()
    return ours, theirs, diff


def pass_flops(model: torch.nn.Module, call: Callable, train: bool) -> None:
    """The counted work of one image: the forward, plus the backward when training (Adam is O(params))."""
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([10])
    if train:
        model.train()
        call(model, x, t).square().mean().backward()
        model.zero_grad(set_to_none=True)
    else:
        model.eval()
        with torch.inference_mode():
            call(model, x, t)


def make_step(model: torch.nn.Module, call: Callable, batch: int, train: bool) -> Callable[[], None]:
    """One training step (forward, ε-MSE loss, backward, Adam) or one sampling forward."""
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 3, 32, 32, generator=gen)
    noise = torch.randn(batch, 3, 32, 32, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    if not train:

        def infer() -> None:
            model.eval()
            with torch.inference_mode():
                call(model, x, t)

        return infer
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)  # the paper's optimizer, torch's default implementation

    def train_step() -> None:
        model.train()
        loss = F.mse_loss(call(model, x, t), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return train_step


def variant(name: str, ours: torch.nn.Module, theirs: torch.nn.Module) -> tuple[torch.nn.Module, Callable, str]:
    """(module, call, base network name) for a variant such as "ours+compile+bf16"."""
    base, *extras = name.split("+")
    if base not in ("ours", "diffusers") or not set(extras) <= {"compile", "bf16"}:
        raise SystemExit(f"unknown variant {name!r}: use ours or diffusers, optionally +compile and/or +bf16")
    module = ours if base == "ours" else theirs
    plain: Callable = (lambda m, x, t: m(x, t)) if base == "ours" else (lambda m, x, t: m(x, t).sample)
    if "compile" in extras:
        module = torch.compile(module)
    if "bf16" in extras:
        def call(m: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return plain(m, x, t).float()
        return module, call, base
    return module, plain, base


def race(steps: dict[str, Callable[[], None]], warmup: int, iters: int) -> dict[str, list[float]]:
    """Seconds per step of each entry, alternating the order every iteration (ABBA...)."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(iters):
        for name in names if i % 2 == 0 else reversed(names):
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 8 only, 2 iterations: a smoke test")
    parser.add_argument("--train-batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--infer-batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=None, help="timed iterations per case (default 8; 5 at b>=32)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--variants", default="ours,diffusers",
                        help="comma-separated: ours, diffusers, each optionally with +compile and/or +bf16")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.train_batches, args.infer_batch, args.iters = [8], 8, 2

    _register_cpu_attention_flops()
    started = time.perf_counter()
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"cpu: {cpu_name()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}")
    print(
        f"torch {torch.__version__}, python {platform.python_version()}, load average at start "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    peak = matmul_peak_flops(2048 if args.quick else 4096, 3 if args.quick else 5)
    print(f"float32 matmul peak (best of a {2048 if args.quick else 4096}² matmul): {peak / 1e9:.0f} GFLOP/s")

    import diffusers

    ours, theirs, diff = build_models(dropout=PRESETS["cifar10"].model.dropout)
    print(
        f"model: cifar10 preset, {count_parameters(ours):,} parameters (diffusers {diffusers.__version__}: "
        f"{count_parameters(theirs):,}); same weights, max |ours - diffusers| = {diff:.1e}"
    )
    names = args.variants.split(",")
    if "diffusers" not in names:
        names.append("diffusers")
    models, calls, bases = {}, {}, {}
    for name in names:
        models[name], calls[name], bases[name] = variant(name, ours, theirs)

    cases = [("train", b) for b in args.train_batches] + [("infer", args.infer_batch)]
    rows = []
    for mode, batch in cases:
        train = mode == "train"
        base_flops = {
            name: count_flops(lambda m=model, c=calls[name], tr=train: pass_flops(m, c, tr))
            for name, model in (("ours", ours), ("diffusers", theirs))
        }  # FLOPs per image, counted at batch 1 on the eager float32 networks
        flops = {name: base_flops[bases[name]] for name in models}
        iters = args.iters or (5 if batch >= 32 else 8)
        steps = {name: make_step(models[name], calls[name], batch, train) for name in models}
        times = race(steps, args.warmup, iters)
        rows.append((mode, batch, iters, flops, times))
        med = {n: batch / statistics.median(ts) for n, ts in times.items()}
        best = {n: batch / min(ts) for n, ts in times.items()}
        print(
            f"\n{'training step' if train else 'sampling forward'}, batch {batch}, {iters} iterations "
            f"(FLOPs/image: {base_flops['ours'] / 1e9:.2f} G ours, {base_flops['diffusers'] / 1e9:.2f} G diffusers)"
        )
        print(f"  {'':24} {'img/s (median)':>15} {'img/s (best)':>13} {'% of matmul peak':>17} {'/diffusers':>11}")
        for name in models:
            frac = flops[name] * med[name] / peak
            print(f"  {name:24} {med[name]:15.2f} {best[name]:13.2f} {100 * frac:16.0f}% "
                  f"{med[name] / med['diffusers']:10.3f}×")
        print(
            f"  ratio ours/diffusers: {med['ours'] / med['diffusers']:.3f} (median), "
            f"{best['ours'] / best['diffusers']:.3f} (best)" if "ours" in models else ""
        )
    print(
        f"\nload average at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
        f"total {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
