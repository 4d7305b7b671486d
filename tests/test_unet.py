"""The paper's U-Net: shapes, parameter counts against diffusers' UNet2DModel, gradients, input checks."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ddpm.config import PRESETS, UNetConfig
from ddpm.nets.unet import UNet, count_parameters

SMALL = UNetConfig(
    image_size=16,
    in_channels=3,
    base_channels=32,
    channel_mults=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(8,),
    dropout=0.1,
    num_groups=8,
)
UNET_PRESETS = sorted(name for name, run in PRESETS.items() if isinstance(run.model, UNetConfig))


def _diffusers_kwargs(cfg: UNetConfig, out_channels: int | None = None) -> dict:
    """UNet2DModel arguments for the same network, written out here independently of ddpm.interop."""
    levels = len(cfg.channel_mults)
    attn = [cfg.image_size // 2**i in cfg.attn_resolutions for i in range(levels)]
    return dict(
        sample_size=cfg.image_size,
        in_channels=cfg.in_channels,
        out_channels=cfg.in_channels if out_channels is None else out_channels,
        block_out_channels=tuple(cfg.base_channels * m for m in cfg.channel_mults),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        layers_per_block=cfg.num_res_blocks,
        norm_num_groups=cfg.num_groups,
        norm_eps=1e-6,
        attention_head_dim=None,
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
        dropout=cfg.dropout,
    )


@pytest.mark.parametrize(
    "cfg,out_channels",
    [
        (SMALL, None),
        (UNetConfig(
            image_size=16,
            in_channels=3,
            base_channels=32,
            channel_mults=(1, 2),
            num_res_blocks=1,
            attn_resolutions=(8,),
            num_groups=8,
        ), 6),  # a learned Σ: twice the input channels
        (UNetConfig(
            image_size=8,
            in_channels=1,
            base_channels=16,
            channel_mults=(1, 2, 2),
            num_res_blocks=2,
            attn_resolutions=(8, 4, 2),
            dropout=0.0,
            num_groups=4,
        ), None),
        (UNetConfig(
            image_size=4,
            in_channels=2,
            base_channels=8,
            channel_mults=(1,),
            num_res_blocks=1,
            attn_resolutions=(),
            num_groups=4,
        ), 4),
    ],
    ids=["small", "learn_sigma", "grey-3-levels", "one-level"],
)
@pytest.mark.parametrize("time_dtype", [torch.long, torch.float32])
def test_output_shape(cfg: UNetConfig, out_channels: int | None, time_dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    net = UNet(cfg, out_channels)
    x = torch.randn(3, cfg.in_channels, cfg.image_size, cfg.image_size)
    t = torch.tensor([0, 5, 999]).to(time_dtype)
    out = net(x, t)
    expected_channels = cfg.in_channels if out_channels is None else out_channels
    assert out.shape == (3, expected_channels, cfg.image_size, cfg.image_size)
    assert out.dtype == torch.float32 and out.is_contiguous() and torch.isfinite(out).all()


def test_eval_forward_is_deterministic_and_same_with_and_without_grad() -> None:
    torch.manual_seed(0)
    net = UNet(SMALL).eval()
    for p in net.parameters():  # the official init zeroes the branch outputs; randomize to see everything
        torch.nn.init.normal_(p, std=0.2)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 400])
    with_grad = net(x, t)
    with torch.inference_mode():
        no_grad = net(x, t)
    torch.testing.assert_close(with_grad.detach(), no_grad, rtol=0, atol=1e-6)


def test_timestep_changes_output() -> None:
    torch.manual_seed(0)
    net = UNet(SMALL).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(1, 3, 16, 16)
    a, b = net(x, torch.tensor([0])), net(x, torch.tensor([500]))
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("preset", UNET_PRESETS)
def test_parameter_count_equals_diffusers(preset: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    cfg = PRESETS[preset].model
    with torch.device("meta"):  # shapes only: no memory, no initialization, no forward
        ours = count_parameters(UNet(cfg))
        theirs = count_parameters(diffusers.UNet2DModel(**_diffusers_kwargs(cfg)))
    assert ours == theirs
    if preset == "cifar10":
        assert ours == 35_746_307  # the paper's 35.7M
    if cfg.image_size == 256:
        assert 113_000_000 < ours < 115_000_000  # the paper's 114M


def test_count_parameters_small() -> None:
    lin = torch.nn.Linear(3, 4)
    assert count_parameters(lin) == 16


def test_official_initialization() -> None:
    torch.manual_seed(0)
    net = UNet(SMALL)
    # the last layer of every residual branch and the output layer start at ~0 (init_scale=1e-10)
    assert net.conv_out.weight.abs().max() < 1e-5
    assert net.down[0].block[0].conv2.weight.abs().max() < 1e-5
    assert net.mid.attn_1.proj_out.weight.abs().max() < 1e-5
    assert net.conv_in.weight.std() > 0.05 and (net.conv_in.bias == 0).all()
    x = torch.randn(2, 3, 16, 16)
    assert net(x, torch.tensor([1, 2])).abs().max() < 1e-3


def test_gradient_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    cfg = UNetConfig(
        image_size=16,
        in_channels=3,
        base_channels=32,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(16, 8),
        dropout=0.1,
        num_groups=8,
    )
    net = UNet(cfg, out_channels=6).train()  # with Σ outputs
    with torch.no_grad():
        for p in net.parameters():  # away from the ~zero official init, so every path carries gradient
            p.normal_(0.0, 0.2)
    x = torch.randn(4, 3, 16, 16)
    loss = net(x, torch.tensor([0, 10, 500, 999])).square().mean()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    net = UNet(SMALL)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.2)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    net.eval()
    torch.testing.assert_close(net(x, t), net(x, t))
    net.train()
    assert (net(x, t) - net(x, t)).abs().max() > 1e-4


def test_bad_image_size_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="image_size=30.*multiple of 8"):
        UNet(UNetConfig(image_size=30))
    with pytest.raises(ValueError, match="num_groups"):
        UNet(UNetConfig(image_size=16, base_channels=24, channel_mults=(1, 2), num_groups=32))
    net = UNet(SMALL)
    with pytest.raises(ValueError, match=r"x of shape \(B, 3, 16, 16\), got \(2, 3, 32, 32\)"):
        net(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"x of shape"):
        net(torch.randn(2, 1, 16, 16), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"timesteps must be a tensor of shape \(2,\)"):
        net(torch.randn(2, 3, 16, 16), torch.tensor([0, 1, 2]))


def test_network_does_not_import_diffusers() -> None:
    code = "import sys, ddpm.nets.unet, ddpm.interop.diffusers; assert 'diffusers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
