"""The paper's U-Net (Ho et al. 2020, Sec. 4 and Appendix B; official ``diffusion_tf/models/unet.py``).

A PixelCNN++-style backbone: wide residual blocks with GroupNorm, a Transformer sinusoidal time
embedding added inside every residual block, single-head self-attention at the 16×16 resolution,
``num_res_blocks`` blocks per resolution on the way down and ``num_res_blocks + 1`` on the way up with
skip concatenation. A class-conditional U-Net (``num_classes`` = K) adds a learned class embedding to the time
embedding (as diffusers' ``num_class_embeds``), with one extra row, index K, for "no class". Parameter names
follow the official code's variable scopes (``down.{level}``, ``mid``, ``up.{level}``, ``temb.dense0`` ...), so
the level index means the same resolution on both paths. ``ddpm.interop.diffusers`` maps them to and from
diffusers' ``UNet2DModel`` names.

Speed choices, each measured on a 2-core AVX-512 CPU (``benchmarks/README.md``): activations run in
the channels-last memory format (about 7% faster sampling, training unchanged; parameters stay
contiguous so state dicts save as they are); q, k and v come from one matrix product and go through
``scaled_dot_product_attention``; the time-embedding and residual additions are in place; dropout
draws its mask with ``rand_like``; SiLU is in place when no graph is recorded. The 3x3 convolutions
(oneDNN) are ~92% of the FLOPs and already run near the machine's matmul peak, which bounds any gain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm.config import UNetConfig
from ddpm.nets import count_parameters
from ddpm.nets.embedding import timestep_embedding

__all__ = ["UNet", "count_parameters", "timestep_embedding"]

GROUPNORM_EPS = 1e-6  # the official code's tf.contrib group_norm epsilon


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=GROUPNORM_EPS)


def _silu(x: Tensor) -> Tensor:
    # in place when no graph is recorded (sampling): saves a pass over memory
    return F.silu(x, inplace=not torch.is_grad_enabled())


def _dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout, keeping each element with probability 1 − p (Srivastava et al. 2014).

    Same distribution as ``F.dropout``; the mask comes from ``rand_like(x) >= p``, which on CPU
    measured ~1.8x faster than ``F.dropout``'s Bernoulli sampling (forward + backward).
    """
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    return x * torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding → Linear → SiLU → Linear (width 4×base), shared by every residual block."""

    def __init__(self, base_channels: int) -> None:
        super().__init__()
        self.base_channels = base_channels
        self.dense0 = nn.Linear(base_channels, 4 * base_channels)
        self.dense1 = nn.Linear(4 * base_channels, 4 * base_channels)

    def forward(self, timesteps: Tensor) -> Tensor:
        """(B,) steps → (B, 4·base) embedding."""
        emb = timestep_embedding(timesteps, self.base_channels).to(self.dense0.weight.dtype)
        return self.dense1(F.silu(self.dense0(emb)))


class ResBlock(nn.Module):
    """Residual block: GN, SiLU, conv3x3, + time projection, GN, SiLU, dropout, conv3x3, + shortcut."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = _norm(out_ch, groups)
        self.dropout = dropout  # before the second conv (official code)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # 1x1 "network-in-network" shortcut when the width changes (official nin_shortcut)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor, temb_act: Tensor) -> Tensor:
        """x (B, in, H, W), temb_act = SiLU(temb) (B, 4·base) → (B, out, H, W)."""
        h = self.conv1(_silu(self.norm1(x)))
        # time embedding added to every block; in place: the conv's backward does not need its output
        h += self.temb_proj(temb_act)[:, :, None, None]
        h = self.conv2(_dropout(_silu(self.norm2(h)), self.dropout, self.training))
        return h.add_(x if self.nin_shortcut is None else self.nin_shortcut(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over the H·W positions (non-local block), with a residual connection."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → (B, C, H, W)."""
        b, c, hgt, wid = x.shape
        # (B, H·W, C) tokens; a free view when x is channels-last
        h = self.norm(x).permute(0, 2, 3, 1).reshape(b, hgt * wid, c)
        w = torch.cat([self.q.weight, self.k.weight, self.v.weight])
        bias = torch.cat([self.q.bias, self.k.bias, self.v.bias])
        q, k, v = F.linear(h, w, bias).unsqueeze(1).chunk(3, dim=-1)
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √C) v
        h = self.proj_out(h.squeeze(1))
        return x + h.reshape(b, hgt, wid, c).permute(0, 3, 1, 2)


class Downsample(nn.Module):
    """Stride-2 conv3x3 with TensorFlow 'SAME' padding (0 before, 1 after), as the official weights expect."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → (B, C, H/2, W/2)."""
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then conv3x3."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → (B, C, 2H, 2W)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the down or up path: residual blocks, optional attention, optional resampling."""

    def __init__(
        self,
        in_chs: list[int],
        out_ch: int,
        temb_ch: int,
        dropout: float,
        groups: int,
        attn: bool,
        resample: nn.Module | None,
    ) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResBlock(c, out_ch, temb_ch, dropout, groups) for c in in_chs)
        self.attn = nn.ModuleList(AttnBlock(out_ch, groups) for _ in in_chs) if attn else nn.ModuleList()
        self.resample = resample


class MidBlock(nn.Module):
    """The middle of the U-Net: residual block, self-attention, residual block."""

    def __init__(self, channels: int, temb_ch: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.block_1 = ResBlock(channels, channels, temb_ch, dropout, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResBlock(channels, channels, temb_ch, dropout, groups)

    def forward(self, x: Tensor, temb_act: Tensor) -> Tensor:
        """(B, C, h, w) → (B, C, h, w)."""
        return self.block_2(self.attn_1(self.block_1(x, temb_act)), temb_act)


class UNet(nn.Module):
    """The DDPM U-Net: ``net(x, timesteps) -> Tensor`` with x (B, C, H, W) and 0-indexed steps (B,)."""

    def __init__(self, cfg: UNetConfig, out_channels: int | None = None) -> None:
        """``out_channels``: the input's channels (default), twice as many when the diffusion learns Σ."""
        super().__init__()
        if not cfg.channel_mults:
            raise ValueError("UNetConfig.channel_mults must name at least one resolution")
        levels = len(cfg.channel_mults)
        factor = 2 ** (levels - 1)
        if cfg.image_size < 1 or cfg.image_size % factor:
            raise ValueError(
                f"UNetConfig.image_size={cfg.image_size} must be a positive multiple of {factor} "
                f"(the U-Net halves it {levels - 1} times)"
            )
        if cfg.num_res_blocks < 1:
            raise ValueError(f"UNetConfig.num_res_blocks={cfg.num_res_blocks} must be >= 1")
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        for name, ch in [("base_channels", cfg.base_channels), *(("channel_mults", w) for w in widths)]:
            if ch % cfg.num_groups:
                raise ValueError(f"UNetConfig.{name} gives {ch} channels, not divisible by num_groups={cfg.num_groups}")
        self.cfg = cfg
        self.out_channels = cfg.in_channels if out_channels is None else out_channels
        self.memory_format = torch.channels_last  # of the activations; measured faster for sampling
        ch, groups, drop = cfg.base_channels, cfg.num_groups, cfg.dropout
        temb_ch = 4 * ch
        self.temb = TimeEmbedding(ch)
        self.num_classes = cfg.num_classes
        # K class rows and the "no class" row K (classifier-free guidance: Ho & Salimans 2022), added to temb
        self.class_embed = nn.Embedding(cfg.num_classes + 1, temb_ch) if cfg.num_classes else None
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        # down path: the widths of everything pushed onto the skip stack, as in the official code
        skip_chs = [ch]
        self.down = nn.ModuleList()
        cur, res = ch, cfg.image_size
        for i, width in enumerate(widths):
            in_chs = [cur] + [width] * (cfg.num_res_blocks - 1)
            last = i == levels - 1
            has_attn = res in cfg.attn_resolutions
            down = None if last else Downsample(width)
            self.down.append(Level(in_chs, width, temb_ch, drop, groups, attn=has_attn, resample=down))
            cur = width
            skip_chs += [width] * cfg.num_res_blocks + ([] if last else [width])
            res = res if last else res // 2

        self.mid = MidBlock(cur, temb_ch, drop, groups)

        # up path, built per level (index = resolution level); run from the deepest level upwards
        up_levels: list[Level] = []
        for i in reversed(range(levels)):
            width = widths[i]
            in_chs = []
            for _ in range(cfg.num_res_blocks + 1):
                in_chs.append(cur + skip_chs.pop())  # skip concatenation
                cur = width
            has_attn = res in cfg.attn_resolutions
            up = Upsample(width) if i else None
            up_levels.append(Level(in_chs, width, temb_ch, drop, groups, attn=has_attn, resample=up))
            res = res * 2 if i else res
        self.up = nn.ModuleList(reversed(up_levels))

        self.norm_out = _norm(ch, groups)
        self.conv_out = nn.Conv2d(ch, self.out_channels, 3, padding=1)
        self.reset_parameters()

    def _labels(self, y: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """Class indices (B,) in 0..K, "no class" (K) for every image when ``y`` is None."""
        assert self.num_classes is not None
        if y is None:
            return torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        if not torch.is_tensor(y) or y.shape != (batch,) or y.dtype.is_floating_point or y.dtype == torch.bool:
            shape = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
            raise ValueError(f"class labels y must be an integer tensor of shape ({batch},), got {shape}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) > self.num_classes):
            raise ValueError(f"class labels must lie in 0..{self.num_classes} ({self.num_classes}: no class), got "
                             f"{int(y.min())}..{int(y.max())}")
        return y.long()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official initialization: Glorot-uniform weights, zero biases, ~0 on each branch's last layer."""
        # official nn.default_init(scale) = variance_scaling(scale, 'fan_avg', 'uniform') = xavier_uniform,
        # gain √scale; the last layer of every residual branch and the output use scale 1e-10
        last = {id(m.conv2) for m in self.modules() if isinstance(m, ResBlock)}
        last |= {id(m.proj_out) for m in self.modules() if isinstance(m, AttnBlock)} | {id(self.conv_out)}
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight, gain=1e-5 if id(m) in last else 1.0)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, timesteps: Tensor, y: Tensor | None = None) -> Tensor:
        """ε (or x₀, μ; and Σ outputs if learned) for noisy images x (B, C, H, W) at 0-indexed steps (B,).

        ``y`` (B,) holds class indices 0..K−1, or K for "no class"; None is "no class" for every image.
        """
        cfg = self.cfg
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[2:] != (cfg.image_size, cfg.image_size):
            raise ValueError(
                f"UNet expects x of shape (B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}), "
                f"got {tuple(x.shape)}"
            )
        if not torch.is_tensor(timesteps) or timesteps.shape != (x.shape[0],):
            shape = tuple(timesteps.shape) if torch.is_tensor(timesteps) else type(timesteps).__name__
            raise ValueError(f"timesteps must be a tensor of shape ({x.shape[0]},), got {shape}")
        temb = self.temb(timesteps)
        if self.class_embed is not None:
            temb = temb + self.class_embed(self._labels(y, x.shape[0], x.device))
        elif y is not None:
            raise ValueError("this U-Net is unconditional (model.num_classes is None): it takes no class labels y")
        temb_act = F.silu(temb)  # every block applies SiLU before its projection
        h = self.conv_in(x.contiguous(memory_format=self.memory_format))
        skips = [h]
        for level in self.down:
            for i, block in enumerate(level.block):
                h = block(h, temb_act)
                if level.attn:
                    h = level.attn[i](h)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
                skips.append(h)
        h = self.mid(h, temb_act)
        for level in reversed(self.up):
            for i, block in enumerate(level.block):
                h = block(torch.cat([h, skips.pop()], dim=1), temb_act)
                if level.attn:
                    h = level.attn[i](h)
            if level.resample is not None:
                h = level.resample(h)
        h = self.conv_out(_silu(self.norm_out(h)))
        return h.contiguous()
