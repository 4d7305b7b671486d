"""Bits-back compression (Algorithms 3-4): exact round trips, codelength = the bound, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _eval_tiny import make_checkpoint, one_thread  # noqa: F401  (fixture)
from ddpm.compression import CodecOptions, CompressionError, compress, decompress, model_hash
from ddpm.compression import codec as codec_module
from ddpm.compression.chain import ChainCode, decode_chain, encode_chain, latent_grid
from ddpm.compression.codec import batch_plan
from ddpm.compression.container import NO_GAMMA, unpack
from ddpm.compression.files import read_images, write_images
from ddpm.compression.stack import Stack
from ddpm.diffusion import GaussianDiffusion
from ddpm.loading import load_model
from ddpm.rng import GlobalNoise
from ddpm.sampling.analytic import AnalyticDiffusion, estimate_gamma
from ddpm.schedules import Schedule, linear_betas, spaced_steps

OLD = Path(__file__).parent / "data" / "checkpoint_v0_1"  # a checkpoint and a compressed file of ddpm 0.1

LEVELS = 17


# --- the stack ---------------------------------------------------------------------------------

def test_gaussian_and_level_symbols_round_trip_including_escapes():
    rng = np.random.default_rng(0)
    stack = Stack(rng.integers(1, 2**32, 64, dtype=np.uint32))
    start = stack.words().copy()
    mean, std = rng.normal(0, 50, 300), rng.uniform(0.5, 20, 300)
    values = np.rint(mean + std * rng.normal(size=300)).astype(np.int64)
    values[::37] += np.array([10**6, -10**7, 12345, -999, 5 * 10**8, -3, 77, 10**5, -10**5])[: len(values[::37])]
    probs = rng.dirichlet(np.ones(LEVELS), 50)
    levels = rng.integers(0, LEVELS, 50)
    stack.push_gaussian(values, mean, std, window=4, escape=True)
    stack.push_levels(levels, probs)
    assert np.array_equal(stack.pop_levels(probs), levels)
    assert np.array_equal(stack.pop_gaussian(mean, std, window=4, escape=True), values)
    assert np.array_equal(stack.words(), start)


def test_pop_then_push_returns_the_borrowed_bits_exactly():
    """The bits-back identity: sampling with q and pushing the sample back with q restores the stack."""
    rng = np.random.default_rng(1)
    stack = Stack(rng.integers(1, 2**32, 200, dtype=np.uint32))
    start = stack.words().copy()
    mean, std = rng.normal(0, 30, 100), rng.uniform(1, 8, 100)
    sample = stack.pop_gaussian(mean, std, window=8, escape=False)
    assert np.all(np.abs(sample - np.rint(mean)) <= np.ceil(8 * std.max()))
    assert stack.low_water < 200
    stack.push_gaussian(sample, mean, std, window=8, escape=False)
    assert np.array_equal(stack.words(), start)


def test_samples_popped_from_random_bits_follow_the_gaussian():
    rng = np.random.default_rng(2)
    stack = Stack(rng.integers(1, 2**32, 20_000, dtype=np.uint32))
    x = stack.pop_gaussian(np.full(20_000, 3.3), np.full(20_000, 6.0), window=8, escape=False)
    assert abs(x.mean() - 3.3) < 4 * 6 / np.sqrt(20_000)
    assert abs(x.std() - np.sqrt(36 + 1 / 12)) < 0.15


def test_batch_plan_ramps_up_and_covers_every_image_in_order():
    plan = batch_plan(100, 8)
    assert [s for s, _ in plan] == list(np.cumsum([0] + [n for _, n in plan[:-1]]))
    assert sum(n for _, n in plan) == 100
    assert max(n for _, n in plan) == 8 and plan[0] == (0, 1)
    assert all(n <= max(1, start // 2) for start, n in plan)
    assert batch_plan(1, 8) == [(0, 1)] and batch_plan(0, 8) == []


# --- the chain against the bound, with the exact denoiser of a tiny data set ---------------------

class ExactDenoiser:
    """ε_θ of the Bayes-optimal x̂₀ = E[x_0|x_t] for a uniform distribution over a few images."""

    def __init__(self, data: torch.Tensor, schedule: Schedule) -> None:
        self.data, self.alpha_bar = data.double(), schedule.alpha_bar

    def __call__(self, x_t: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        ab = self.alpha_bar[steps].reshape(-1, 1, 1, 1)
        x = x_t.double()
        d2 = ((x[:, None] - ab.sqrt()[:, None] * self.data[None]) ** 2).flatten(2).sum(-1)  # (B, K)
        w = torch.softmax(-d2 / (2 * (1 - ab.flatten()[:, None])), dim=1)
        x0 = torch.einsum("bk,kchw->bchw", w, self.data)
        return ((x - ab.sqrt() * x0) / (1 - ab).sqrt()).float()


def tiny_data(n: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Four distinct 1×2×2 images at 17 levels, and ``n`` draws from them (integer levels)."""
    g = np.random.default_rng(seed)
    atoms = g.integers(0, LEVELS, (4, 1, 2, 2))
    draws = atoms[g.integers(0, 4, n)]
    return torch.from_numpy(2.0 * atoms / (LEVELS - 1) - 1).float(), draws


@pytest.mark.parametrize("variance", ["model", "analytic"])
@pytest.mark.parametrize("T,steps", [(30, None), (60, 12)])
def test_codelength_matches_the_variational_bound(T, steps, variance):
    """The coded length is the bound of the chain it codes — with the model's σ² or Analytic-DPM's σ*² (Bao et al.)
    from a Γ estimate — and the receiver gets every image back, returning the borrowed words."""
    base = GaussianDiffusion(Schedule.from_betas(linear_betas(T, 1e-4, 0.3)), levels=LEVELS)
    atoms, k0 = tiny_data(240)
    model = ExactDenoiser(tiny_data(1)[0], base.schedule)
    x0 = torch.from_numpy(2.0 * k0 / (LEVELS - 1) - 1).float()
    diffusion = base
    if variance == "analytic":
        gamma, _ = estimate_gamma(model, base, [x0], GlobalNoise(torch.Generator().manual_seed(1)))
        diffusion = AnalyticDiffusion(base, gamma)
    if steps is not None:
        diffusion = diffusion.respaced(spaced_steps(T, steps))
    code = ChainCode(diffusion, latent_grid(diffusion.schedule, 1.0), 8.0, clip_denoised=False)
    stack = Stack(np.random.default_rng(3).integers(1, 2**32, 4000, dtype=np.uint32))
    start_bits = stack.coder.num_valid_bits()
    for i in range(0, len(k0), 60):
        encode_chain(stack, model, code, k0[i:i + 60])
    net_bits = stack.coder.num_valid_bits() - start_bits
    bound = diffusion.bound(model, x0, GlobalNoise(torch.Generator().manual_seed(0)), clip_denoised=False)
    bound_bits = bound.total_bpd.double().sum().item() * 4
    stderr_bits = bound.total_bpd.double().std().item() * 4 * np.sqrt(len(k0))
    assert abs(net_bits - bound_bits) < 0.03 * bound_bits + 4 * stderr_bits, (net_bits, bound_bits, stderr_bits)
    decoded = [decode_chain(stack, model, code, (60, 1, 2, 2)) for _ in range(0, len(k0), 60)][::-1]
    assert np.array_equal(np.concatenate(decoded), k0)
    assert stack.coder.num_valid_bits() == start_bits


def test_a_wrong_model_costs_far_more_and_escapes_cap_what_it_cannot_predict():
    """The measurement can fail: x̂₀ of the wrong sign costs many times the right model's length, yet less
    than its own bound, because values beyond the ±8σ window are escaped at a fixed cost (and still exact)."""
    T = 30
    diffusion = GaussianDiffusion(Schedule.from_betas(linear_betas(T, 1e-4, 0.3)), levels=LEVELS)
    atoms, k0 = tiny_data(120)
    code = ChainCode(diffusion, latent_grid(diffusion.schedule, 1.0), 8.0, clip_denoised=False)

    def bits(model):
        stack = Stack(np.random.default_rng(3).integers(1, 2**32, 4000, dtype=np.uint32))
        before = stack.coder.num_valid_bits()
        encode_chain(stack, model, code, k0)
        net = stack.coder.num_valid_bits() - before
        assert np.array_equal(decode_chain(stack, model, code, k0.shape), k0)
        return net

    wrong = ExactDenoiser(-atoms, diffusion.schedule)
    x0 = torch.from_numpy(2.0 * k0 / (LEVELS - 1) - 1).float()
    wrong_bound = diffusion.bound(wrong, x0, GlobalNoise(torch.Generator().manual_seed(0)), clip_denoised=False)
    right_bits, wrong_bits = bits(ExactDenoiser(atoms, diffusion.schedule)), bits(wrong)
    assert wrong_bits > 3 * right_bits
    assert wrong_bits < wrong_bound.total_bpd.double().sum().item() * 4


# --- the codec and the command with a tiny U-Net ---------------------------------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("c") / "tiny", T=20)


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("o") / "tiny", T=20, seed=1)


def digits(n: int) -> np.ndarray:
    from ddpm.data.digits import digits_dataset
    from ddpm.data.levels import to_levels

    ds = digits_dataset("test", levels=LEVELS)
    return np.stack([to_levels(ds[i], LEVELS).numpy() for i in range(n)])


@pytest.mark.parametrize("steps,var_type", [(None, "fixed_beta"), (7, "learned")])
def test_compress_then_decompress_is_exact(tmp_path, steps, var_type):
    path = make_checkpoint(tmp_path / "m", T=20, var_type=var_type, loss_type="vlb") \
        if var_type != "fixed_beta" else make_checkpoint(tmp_path / "m", T=20)
    model = load_model(path)
    images = digits(11)
    c = compress(model, images, CodecOptions(steps=steps, batch_size=3))
    assert c.header.count == 11 and c.header.steps == (steps or 20)
    d = decompress(model, c.data, previews=3)
    assert np.array_equal(d.images, images)
    assert len(d.previews) == 3 and all(p.shape == (11, 1, 8, 8) for p in d.previews.values())
    codec_module.PREVIEW_IMAGES = 4  # previews keep only the first PREVIEW_IMAGES images: memory stays bounded
    try:
        few = decompress(model, c.data, previews=3).previews
    finally:
        codec_module.PREVIEW_IMAGES = 100
    assert all(few[t].shape == (4, 1, 8, 8) and np.array_equal(few[t], d.previews[t][:4]) for t in d.previews)
    assert c.initial_bits_per_dim < c.payload_bits_per_dim


def test_a_file_coded_with_analytic_variance_records_it_and_needs_the_same_estimate(ckpt):
    model = load_model(ckpt)
    images = digits(5)
    gamma = torch.linspace(0.2, 1.0, model.diffusion.T, dtype=torch.float64)  # any Γ: both sides use the same
    with pytest.raises(CompressionError, match="needs the model's Γ estimate"):
        compress(model, images, CodecOptions(steps=6, variance="analytic"))
    c = compress(model, images, CodecOptions(steps=6, batch_size=2, variance="analytic"), gamma=gamma)
    assert c.header.variance == 1 and c.header.gamma_hash != NO_GAMMA
    assert unpack(c.data)[0] == c.header
    assert np.array_equal(decompress(model, c.data, gamma=gamma).images, images)
    with pytest.raises(CompressionError, match="coded with Analytic-DPM's variance: it needs"):
        decompress(model, c.data)
    with pytest.raises(CompressionError, match="another Γ estimate"):
        decompress(model, c.data, gamma=gamma * 1.01)
    plain = compress(model, images, CodecOptions(steps=6, batch_size=2))
    assert plain.header.variance == 0 and plain.header.gamma_hash == NO_GAMMA
    assert plain.data != c.data
    with pytest.raises(CompressionError, match="--variance must be one of model, analytic"):
        CodecOptions(variance="learned")  # type: ignore[arg-type]


def test_a_file_written_by_ddpm_0_1_still_decodes(tmp_path):
    """Format version 1 (no variance fields), the 0.1 checkpoint's model hash (learn_sigma on the model)."""
    data = (OLD / "images_v1.ddpz").read_bytes()
    assert data[4] == 1  # the format version byte
    ckpt = tmp_path / "old"
    ckpt.mkdir()
    for name in ("meta.json", "model.safetensors"):
        (ckpt / name).write_bytes((OLD / name).read_bytes())
    decoded = decompress(load_model(ckpt), data)
    expected = np.random.default_rng(0).integers(0, 17, (3, 1, 4, 4))  # how the 0.1 file's images were made
    assert decoded.header.variance == 0 and np.array_equal(decoded.images, expected)


def test_model_identity_and_damage_are_refused(ckpt, other_ckpt):
    model = load_model(ckpt)
    data = compress(model, digits(4), CodecOptions(steps=5)).data
    with pytest.raises(CompressionError, match="different model"):
        decompress(load_model(other_ckpt), data)
    assert model_hash(load_model(ckpt, "model")) == model_hash(model)  # model-only checkpoint: one set of weights
    with pytest.raises(CompressionError, match="truncated"):
        decompress(model, data[:-9])
    with pytest.raises(CompressionError, match="truncated"):
        decompress(model, data[:30])
    flipped = bytearray(data)
    flipped[70] ^= 0x10
    with pytest.raises(CompressionError, match="checksum"):
        decompress(model, bytes(flipped))
    with pytest.raises(CompressionError, match="not a ddpm compressed file"):
        decompress(model, b"PNG..." + data)
    with pytest.raises(CompressionError, match="longer"):
        decompress(model, data + b"\0")


def test_a_receiver_whose_network_differs_is_caught(ckpt):
    model = load_model(ckpt)
    data = compress(model, digits(6), CodecOptions(steps=6)).data
    net = model.net
    original = net.forward
    net.forward = lambda x, t: original(x, t) * (1 + 1e-3)  # same weights (same hash), different outputs
    with pytest.raises(CompressionError, match="verified"):
        decompress(model, data)


def test_images_that_do_not_fit_the_model_are_refused(ckpt):
    model = load_model(ckpt)
    with pytest.raises(CompressionError, match="shape"):
        compress(model, np.zeros((2, 1, 16, 16), np.uint8))
    with pytest.raises(CompressionError, match="levels"):
        compress(model, np.full((2, 1, 8, 8), LEVELS, np.uint8))
    with pytest.raises(CompressionError, match="no images"):
        compress(model, np.zeros((0, 1, 8, 8), np.uint8))
    for bad, match in [(dict(window=0), "window"), (dict(grid_log2=9), "grid_log2"), (dict(batch_size=0), "batch_size"),
                       (dict(steps=21), "steps")]:
        with pytest.raises(CompressionError, match=match):
            compress(model, np.zeros((1, 1, 8, 8), np.uint8), CodecOptions(**bad))


def test_image_files_are_read_exactly_or_refused(tmp_path):
    images = digits(3)
    paths = write_images(tmp_path / "in", images, LEVELS)
    assert np.array_equal(read_images(paths, 1, 8, LEVELS), images)
    Image.fromarray(np.full((8, 8), 37, np.uint8)).save(tmp_path / "off.png")
    with pytest.raises(CompressionError, match="not on the model's 17-level grid"):
        read_images([tmp_path / "off.png"], 1, 8, LEVELS)
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(CompressionError, match="8×9 pixels"):
        read_images([tmp_path / "big.png"], 1, 8, LEVELS)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(CompressionError, match="mode 'RGB'"):
        read_images([tmp_path / "rgb.png"], 1, 8, LEVELS)


def test_the_commands_round_trip_files_byte_for_byte(ckpt, tmp_path, capsys):
    from ddpm.cli import main

    paths = write_images(tmp_path / "in", digits(5), LEVELS)
    assert main(["compress", str(tmp_path / "in"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "x.ddpz"),
                 "--steps", "6", "--no-progress"]) == 0
    assert "bits/dim" in capsys.readouterr().out
    assert main(["decompress", str(tmp_path / "x.ddpz"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"),
                 "--previews", "2", "--no-progress"]) == 0
    for p in paths:
        assert (tmp_path / "out" / p.name).read_bytes() == p.read_bytes()
    assert len(list((tmp_path / "out" / "previews").glob("x0_t*.png"))) == 2
    (tmp_path / "x.ddpz").write_bytes((tmp_path / "x.ddpz").read_bytes()[:-1])
    assert main(["decompress", str(tmp_path / "x.ddpz"), "--checkpoint", str(ckpt), "--out",
                 str(tmp_path / "o2")]) == 2
    assert "truncated" in capsys.readouterr().err
    assert main(["compress", str(tmp_path / "missing"), "--checkpoint", str(ckpt), "--out",
                 str(tmp_path / "y.ddpz")]) == 2
    assert "no such file" in capsys.readouterr().err and not (tmp_path / "y.ddpz").exists()


def test_the_commands_code_with_the_stored_analytic_estimate(tmp_path, capsys):
    from ddpm.cli import main

    ckpt = make_checkpoint(tmp_path / "tiny", T=20)  # its own: the estimate is stored beside it
    paths = write_images(tmp_path / "in", digits(4), LEVELS)
    args = ["compress", str(tmp_path / "in"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "a.ddpz"),
            "--steps", "5", "--variance", "analytic", "--no-progress"]
    assert main(args) == 2
    assert "ddpm analytic-variance" in capsys.readouterr().err  # no estimate yet: it says how to make one
    assert main(["analytic-variance", "--checkpoint", str(ckpt), "--n-images", "8", "--device", "cpu"]) == 0
    assert main(args) == 0
    assert "analytic variance" in capsys.readouterr().out
    assert unpack((tmp_path / "a.ddpz").read_bytes())[0].variance == 1
    assert main(["decompress", str(tmp_path / "a.ddpz"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    for p in paths:
        assert (tmp_path / "out" / p.name).read_bytes() == p.read_bytes()
