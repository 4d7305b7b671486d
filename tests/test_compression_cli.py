"""Compression: the code length against an independent count, and the commands' files and messages."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from _eval_tiny import make_checkpoint, one_thread  # noqa: F401  (fixture)
from ddpm.compression import CodecOptions, compress
from ddpm.compression.chain import ChainCode, encode_chain, latent_grid
from ddpm.compression.files import write_images
from ddpm.compression.stack import Stack
from ddpm.diffusion import GaussianDiffusion
from ddpm.loading import load_model
from ddpm.schedules import Schedule, linear_betas
from test_compression import LEVELS, ExactDenoiser, digits, tiny_data

_ERF = np.vectorize(math.erf)


def _log2_gaussian_bins(symbols: np.ndarray, mean: np.ndarray, std: np.ndarray, edge: int) -> np.ndarray:
    """log2 of N(mean, std²)'s mass on each integer's bin [k − ½, k + ½], the bins at ±edge reaching to ±∞."""
    def cdf(x: np.ndarray) -> np.ndarray:
        return 0.5 * (1 + _ERF((x - mean) / (std * math.sqrt(2))))

    upper = np.where(symbols >= edge, 1.0, cdf(symbols + 0.5))
    lower = np.where(symbols <= -edge, 0.0, cdf(symbols - 0.5))
    return np.log2(upper - lower)


class CountingStack(Stack):
    """A stack that also counts, by its own arithmetic, the information of every symbol it codes."""

    def __init__(self, words: np.ndarray) -> None:
        super().__init__(words)
        self.pushed_bits = self.popped_bits = 0.0
        self.coded: list[tuple[str, int]] = []  # (what, how many symbols) of each call, in order

    def _gaussian_bits(self, symbols, mean, std, window, escape) -> float:
        centre = np.rint(mean).astype(np.int64)
        w = max(1, math.ceil(window * float(np.max(std))))
        offset = symbols - centre
        assert np.all(np.abs(offset) <= w + escape)  # no escapes in this test: every value inside its window
        return -float(_log2_gaussian_bins(offset, mean - centre, std, w + int(escape)).sum())

    def push_gaussian(self, symbols, mean, std, window, escape):
        self.coded.append(("push", symbols.size))
        self.pushed_bits += self._gaussian_bits(symbols.astype(np.int64), mean, std, window, escape)
        super().push_gaussian(symbols, mean, std, window, escape)

    def pop_gaussian(self, mean, std, window, escape):
        out = super().pop_gaussian(mean, std, window, escape)
        self.coded.append(("pop", out.size))
        self.popped_bits += self._gaussian_bits(out, mean, std, window, escape)
        return out

    def push_levels(self, levels, probs):
        self.coded.append(("levels", levels.size))
        self.pushed_bits += -float(np.log2(probs[np.arange(len(levels)), levels]).sum())
        super().push_levels(levels, probs)


@pytest.mark.parametrize("T,ratio", [(8, 1.0), (8, 0.5), (25, 1.0)])
def test_the_stack_grows_by_exactly_what_the_chain_costs(T, ratio):
    """Independent of the coder: the net growth of the stack is, to ANS's precision, Σ −log₂ P(pushed) minus
    Σ −log₂ Q(popped), with P and Q the quantized Gaussians (and Eq. 13's categorical) the docs describe: the
    prior's x_T, each x_{t−1} under p_θ, x_0 under the decoder, less each x_t under q (bits back). No term is
    missing or paid twice."""
    diffusion = GaussianDiffusion(Schedule.from_betas(linear_betas(T, 1e-3, 0.4)), levels=LEVELS)
    atoms, k0 = tiny_data(50, seed=4)
    code = ChainCode(diffusion, latent_grid(diffusion.schedule, ratio), 8.0, clip_denoised=False)
    stack = CountingStack(np.random.default_rng(5).integers(1, 2**32, 3000, dtype=np.uint32))
    before = stack.coder.num_valid_bits()
    for i in range(0, len(k0), 10):
        encode_chain(stack, ExactDenoiser(atoms, diffusion.schedule), code, k0[i:i + 10])
    grown = stack.coder.num_valid_bits() - before
    # each chain: pop x_1, push x_0 (Eq. 13), then for t = 2..T pop x_t, push x_{t−1}; last push x_T (prior)
    one_chain = [("pop", 40), ("levels", 40)] + [("pop", 40), ("push", 40)] * (T - 1) + [("push", 40)]
    assert stack.coded == one_chain * 5
    counted = stack.pushed_bits - stack.popped_bits
    assert stack.pushed_bits > 1000 and stack.popped_bits > 1000  # both sides of the ledger are real
    # 24-bit fixed-point probabilities cost ≪ 0.5 %; the ANS head adds at most a few words either way
    assert abs(grown - counted) < 0.005 * stack.pushed_bits + 96, (grown, counted, stack.pushed_bits)


# --- the commands -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("r") / "tiny", T=20)


def _file(ckpt: Path, path: Path, n: int) -> Path:
    path.write_bytes(compress(load_model(ckpt), digits(n), CodecOptions(steps=4, batch_size=2)).data)
    return path


def test_decompress_into_an_earlier_decode_does_not_leave_its_images_beside_the_new_ones(ckpt, tmp_path, capsys):
    """A folder that held 5 decoded images, decoded into again from a 3-image file, must not end up with 5 PNGs (the
    last 2 from the other file) read as this file's output: refused, or with --overwrite the old ones removed."""
    from ddpm.cli import main

    five, three = _file(ckpt, tmp_path / "five.ddpz", 5), _file(ckpt, tmp_path / "three.ddpz", 3)
    out = tmp_path / "out"
    common = ["--checkpoint", str(ckpt), "--out", str(out), "--no-progress"]
    assert main(["decompress", str(five), *common, "--previews", "2"]) == 0
    assert main(["decompress", str(three), *common]) == 2
    err = capsys.readouterr().err
    assert "000003.png" in err and "--overwrite" in err, err
    assert len(list(out.glob("*.png"))) == 5  # refused before anything was written
    assert main(["decompress", str(three), *common, "--overwrite"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["000000.png", "000001.png", "000002.png"]
    assert not list((out / "previews").glob("*.png"))  # the other file's x̂₀ previews went with its images
    assert main(["decompress", str(three), *common]) == 0  # decoding the same file again is fine


def test_a_folder_of_someone_elses_numbered_pngs_is_never_emptied(ckpt, tmp_path, capsys):
    from ddpm.cli import main

    three = _file(ckpt, tmp_path / "three.ddpz", 3)
    out = tmp_path / "mine"
    write_images(out, digits(6), LEVELS)  # the user's own files, no ddpm marker
    args = ["decompress", str(three), "--checkpoint", str(ckpt), "--out", str(out), "--no-progress", "--overwrite"]
    assert main(args) == 2
    assert "did not write" in capsys.readouterr().err
    assert len(list(out.glob("*.png"))) == 6


def test_a_file_that_is_not_one_is_refused_before_the_model_loads_or_the_file_is_read(ckpt, tmp_path, capsys,
                                                                                      monkeypatch):
    """The file's own checks are cheap and come first; a 1 GiB file whose header says 1 KiB is not read into memory."""
    from ddpm import loading
    from ddpm.cli import main

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the file was checked")

    monkeypatch.setattr(loading, "load_model", no_model)
    data = _file(ckpt, tmp_path / "ok.ddpz", 3).read_bytes()
    big = tmp_path / "big.ddpz"
    with open(big, "wb") as f:
        f.write(data)
        f.truncate(1 << 30)  # sparse: costs no disk, but reading it would cost 1 GiB of memory
    args = ["--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(["decompress", str(big), *args]) == 2
    assert f"longer than its header says: {1 << 30} bytes" in capsys.readouterr().err
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    assert main(["decompress", str(tmp_path / "x.png"), *args]) == 2
    assert "not a ddpm compressed file" in capsys.readouterr().err
    flipped = bytearray(data)
    flipped[80] ^= 1
    (tmp_path / "bad.ddpz").write_bytes(bytes(flipped))
    assert main(["decompress", str(tmp_path / "bad.ddpz"), *args]) == 2
    assert "checksum" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_compress_says_what_the_bits_are_and_which_bound_to_compare_with(ckpt, tmp_path, capsys):
    from ddpm.cli import main

    write_images(tmp_path / "in", digits(4), LEVELS)
    out = tmp_path / "x.ddpz"
    assert main(["compress", str(tmp_path / "in"), "--checkpoint", str(ckpt), "--out", str(out), "--steps", "5",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    total = 8 * out.stat().st_size / (4 * 64)
    found = re.search(r"([\d.]+) bits/dim = ([\d.]+) coded \+ ([\d.]+) start-up .*?\+ ([\d.]+) header", text)
    assert found, text
    shown, coded, startup, header = map(float, found.groups())
    assert shown == pytest.approx(total, abs=1e-4)
    assert abs(coded + startup + header - total) < 3e-4  # the parts add up to the file
    assert header == pytest.approx(8 * 76 / 256, abs=1e-4)  # 72 bytes of header, 4 of CRC
    assert f"ddpm nll --checkpoint {ckpt} --steps 5" in text


def test_a_receiver_whose_network_differs_slightly_is_refused_within_the_first_batch_it_decodes(ckpt):
    """Differences in network outputs (another torch build or CPU) are found after one chain, not after the file."""
    from ddpm.compression import CompressionError, decompress

    model = load_model(ckpt)
    data = compress(model, digits(12), CodecOptions(batch_size=4)).data  # 7 batches of T = 20 network calls
    net, calls = model.net, []
    original = net.forward

    def slightly_off(x, t):
        calls.append(len(x))
        return original(x, t) * (1 + 1e-5)  # same weights and hash: 10⁻⁵ relative, ~84 float32 ulps

    net.forward = slightly_off
    with pytest.raises(CompressionError, match="did not decode to a verified end"):
        decompress(model, data)
    assert len(calls) <= 20, len(calls)
