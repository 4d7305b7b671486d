"""Algorithm 1 then Algorithm 2 end to end: an MLP ε-network on a 2-D mixture of 8 Gaussians."""

import torch

from ddpm.config import DiffusionConfig, MLPConfig
from ddpm.data.toy2d import TOY2D_RADIUS, TOY2D_STD, toy2d_centers, toy2d_sample
from ddpm.diffusion import GaussianDiffusion
from ddpm.nets import build_model
from ddpm.rng import GlobalNoise
from ddpm.sampling import sample


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, scales=(0.02, 0.05, 0.1, 0.2, 0.5)) -> float:
    """Squared maximum mean discrepancy with a sum of Gaussian kernels (biased V-statistic)."""
    xy = torch.cat([x, y])
    d2 = torch.cdist(xy, xy) ** 2
    k = sum(torch.exp(-d2 / (2 * s * s)) for s in scales)
    n = len(x)
    return (k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()).item()


def train_toy(steps: int = 3000) -> tuple[torch.nn.Module, GaussianDiffusion]:
    """Algorithm 1 with L_simple on the paper's linear schedule (T = 1000)."""
    torch.manual_seed(0)
    d = GaussianDiffusion.from_config(DiffusionConfig())
    net = build_model(MLPConfig(hidden=128, depth=3))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x0 = toy2d_sample(256, g)
        t = d.sample_t(256, g)                                     # t ~ Uniform{1..T}
        noise = torch.randn(x0.shape, generator=g)                 # ε ~ N(0, I)
        loss = d.training_losses(net, x0, t, noise).loss.mean()    # ‖ε − ε_θ(√ᾱ x0 + √(1−ᾱ) ε, t)‖²
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), d


def test_trained_mlp_samples_match_the_data_and_broken_samplers_do_not():
    net, d = train_toy()
    n = 2000
    fresh = toy2d_sample(n, torch.Generator().manual_seed(2))
    baseline = mmd_rbf(toy2d_sample(n, torch.Generator().manual_seed(3)), fresh)
    x = sample(net, d, (n, 2), GlobalNoise(torch.Generator().manual_seed(1)))
    good = mmd_rbf(x, fresh)
    # the threshold sits an order of magnitude above two real sets and far below the broken samplers
    threshold = 0.15
    assert baseline < 0.02
    assert good < threshold, (good, baseline)
    # every mode is covered in roughly equal shares, and points sit on the modes
    dist = torch.cdist(x, toy2d_centers())
    nearest = dist.argmin(1)
    share = torch.bincount(nearest, minlength=8).float() / n
    assert share.min() > 0.08 and share.max() < 0.17, share
    assert (dist.min(1).values < 4 * TOY2D_STD).float().mean() > 0.85
    assert x.norm(dim=1).mean().item() < 1.2 * TOY2D_RADIUS

    # a sign error in Eq. 11 (μ = (x_t + β/√(1−ᾱ) ε_θ)/√α) must fail the same check
    def sign_error(x_t, step):
        return -net(x_t, step)

    broken = sample(sign_error, d, (n, 2), GlobalNoise(torch.Generator().manual_seed(1)))
    assert mmd_rbf(broken, fresh) > 3 * threshold
