"""Classifier-free guidance as a wrapper of the model callable: every sampler, w = 0, learned Σ, class lookup."""

from __future__ import annotations

import pytest
import torch

from ddpm.config import ConfigError, override, preset
from ddpm.diffusion import GaussianDiffusion
from ddpm.nets import network_for
from ddpm.rng import GlobalNoise, per_item
from ddpm.sampling import SAMPLERS, Conditioned, Guided, class_labels, guided, sample
from ddpm.sampling.analytic import AnalyticDiffusion
from ddpm.sampling.guidance import class_index

K = 10


def _cond(**changes):
    cfg = override(preset("digits"), base_channels=16, channel_mults=[1, 2], attn_resolutions=[4], num_groups=8,
                   T=20, beta_end=0.2, num_classes=K, **changes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = network_for(cfg).eval()
        randomize(net)
    return net, GaussianDiffusion.from_config(cfg.diffusion)


def randomize(net: torch.nn.Module) -> None:
    """Every weight random: the official init all but zeroes each residual branch, hiding the class embedding."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=gen) * (fan_in**-0.5 if p.ndim > 1 else 0.1))


@pytest.fixture(scope="module")
def model():
    return _cond()


class Counting:
    """A network that counts its calls and their batch sizes."""

    def __init__(self, net):
        self.net, self.batches, self.num_classes = net, [], net.num_classes

    def __call__(self, x, t, y=None):
        self.batches.append(x.shape[0])
        return self.net(x, t, y=y)


def test_the_classes_change_the_prediction_and_no_class_is_the_null_index(model):
    net, _ = model
    x, t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([3, 10, 15, 19])
    with torch.no_grad():
        none, null = net(x, t), net(x, t, y=torch.full((4,), K))
        a, b = net(x, t, y=torch.tensor([0, 1, 2, 3])), net(x, t, y=torch.tensor([4, 5, 6, 7]))
    assert torch.equal(none, null)
    assert (a - b).abs().max() > 1e-3 and (a - null).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"class labels must lie in 0\.\.10 \(10: no class\), got 0\.\.11"):
        net(x, t, y=torch.tensor([0, 1, 2, 11]))
    with pytest.raises(ValueError, match=r"class labels y must be an integer tensor of shape \(4,\)"):
        net(x, t, y=torch.zeros(4))


def test_guided_prediction_is_one_batched_call_of_the_formula(model):
    net, d = model
    x, t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([5, 12, 19])
    y = torch.tensor([7, 0, 3])
    counting = Counting(net)
    w = 2.0
    with torch.no_grad():
        eps = Guided(counting, y, w, K, learn_sigma=False)(x, t)
        cond, uncond = net(x, t, y=y), net(x, t, y=torch.full((3,), K))
    assert counting.batches == [6]  # the conditional and null halves in one call
    torch.testing.assert_close(eps, (1 + w) * cond - w * uncond, rtol=0, atol=1e-5)


def test_w_zero_is_the_conditional_model(model):
    net, d = model
    y = torch.tensor([1, 4, 9])
    assert isinstance(guided(net, y, 0.0, K, False), Conditioned)
    noise = lambda: per_item(3, "sample", range(3))  # noqa: E731
    for sampler in ("ancestral", "ddim"):
        a = sample(net, d, (3, 1, 8, 8), noise(), sampler, steps=8, classes=y.tolist(), guidance=0.0)
        b = sample(Conditioned(net, y), d, (3, 1, 8, 8), noise(), sampler, steps=8)
        assert torch.equal(a, b), sampler
        c = sample(net, d, (3, 1, 8, 8), noise(), sampler, steps=8, classes=y.tolist(), guidance=1.0)
        assert (a - c).abs().max() > 1e-3  # guidance does change the samples


def test_unconditional_sampling_of_a_conditional_model_uses_the_null_class(model):
    net, d = model
    a = sample(net, d, (2, 1, 8, 8), per_item(0, "sample", range(2)), steps=6)
    b = sample(Conditioned(net, torch.full((2,), K)), d, (2, 1, 8, 8), per_item(0, "sample", range(2)), steps=6)
    assert torch.equal(a, b)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_of_the_registry_takes_guidance(model, sampler):
    net, d = model
    if SAMPLERS[sampler].needs_gamma:
        d = AnalyticDiffusion(d, torch.full((d.T,), 0.5, dtype=torch.float64))
    counting = Counting(net)
    x = sample(counting, d, (4, 1, 8, 8), GlobalNoise(torch.Generator().manual_seed(2)), sampler, steps=6,
               classes=[0, 1, 2, 3], guidance=1.5)
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()
    assert set(counting.batches) == {8}  # every network call carries both halves
    # the guided chain is the plain chain on the guided ε̃ (the sampler sees one model(x_t, t) callable)
    again = sample(Guided(net, torch.tensor([0, 1, 2, 3]), 1.5, K, False), d, (4, 1, 8, 8),
                   GlobalNoise(torch.Generator().manual_seed(2)), sampler, steps=6)
    assert torch.equal(x, again)


def test_learned_sigma_guides_the_mean_channels_and_keeps_the_conditional_variance():
    net, d = _cond(var_type="learned_range", loss_type="hybrid")
    assert net.out_channels == 2
    x, t, y = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([4, 17]), \
        torch.tensor([2, 5])
    with torch.no_grad():
        out = Guided(net, y, 3.0, K, learn_sigma=True)(x, t)
        cond, uncond = net(x, t, y=y), net(x, t, y=torch.full((2,), K))
    torch.testing.assert_close(out[:, :1], 4.0 * cond[:, :1] - 3.0 * uncond[:, :1], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[:, 1:], cond[:, 1:], rtol=0, atol=1e-6)
    x0 = sample(net, d, (2, 1, 8, 8), per_item(0, "sample", range(2)), steps=5, classes=[2, 5], guidance=3.0)
    assert torch.isfinite(x0).all()


def test_classes_by_name_or_index_and_clear_errors(model):
    net, _ = model
    names = ("airplane", "automobile", "bird")
    assert class_index("bird", names) == 2 and class_index(1, names) == 1 and class_index("0", names) == 0
    with pytest.raises(ConfigError, match=r"class 'cat' is not a class of this model; known classes \(index "
                                          r"name\): 0 'airplane', 1 'automobile', 2 'bird'"):
        class_index("cat", names)
    with pytest.raises(ConfigError, match=r"class 3 is not a class .* 2 'bird'"):
        class_index(3, names)
    for odd in ("²", "1.0", "-1", " ", "1_0"):  # digits int() refuses or reads otherwise: the same clear error
        with pytest.raises(ConfigError, match=r"is not a class of this model"):
            class_index(odd, names)
    assert class_labels(net, "all", 20).tolist() == [k for k in range(K) for _ in range(2)]
    assert class_labels(net, 7, 3).tolist() == [7, 7, 7] and class_labels(net, None, 3) is None
    with pytest.raises(ConfigError, match=r"classes='all' .* 10 classes: the number of samples \(15\) must be"):
        class_labels(net, "all", 15)
    with pytest.raises(ConfigError, match=r"classes gives 2 classes for 3 samples"):
        class_labels(net, [1, 2], 3)
    with pytest.raises(ConfigError, match=r"classes 'ten' is not a class of this model; known classes .*"
                                          r"0 '0', 1 '1', .* 9 '9'"):
        sample(net, GaussianDiffusion.from_config(preset("digits").diffusion), (2, 1, 8, 8), classes="ten")


def test_guidance_needs_a_class_and_classes_need_a_conditional_model(model):
    net, d = model
    with pytest.raises(ConfigError, match=r"guidance=2 needs a class to guide towards"):
        sample(net, d, (2, 1, 8, 8), guidance=2.0)
    with pytest.raises(ConfigError, match=r"guidance must be a finite number >= 0"):
        sample(net, d, (2, 1, 8, 8), classes=1, guidance=-1.0)
    cfg = override(preset("digits"), base_channels=16, channel_mults=[1, 2], attn_resolutions=[4], num_groups=8)
    plain = network_for(cfg).eval()
    with pytest.raises(ConfigError, match=r"this model is unconditional \(model.num_classes is None\)"):
        sample(plain, d, (2, 1, 8, 8), classes=3)
    with pytest.raises(ValueError, match=r"this U-Net is unconditional"):
        plain(torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long), y=torch.zeros(1, dtype=torch.long))


def test_labels_repeat_over_a_batch_of_many_times_as_the_bound_stacks_them(model):
    net, d = model
    x0 = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(4)) * 2 - 1
    y = torch.tensor([3, 8])
    whole = d.bound(Conditioned(net, y), x0, GlobalNoise(torch.Generator().manual_seed(5)), t_per_batch=7)
    ones = d.bound(Conditioned(net, y), x0, GlobalNoise(torch.Generator().manual_seed(5)), t_per_batch=1)
    torch.testing.assert_close(whole.total_bpd, ones.total_bpd, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"a batch of 3 inputs for 2 labels"):
        Conditioned(net, y)(torch.zeros(3, 1, 8, 8), torch.zeros(3, dtype=torch.long))
