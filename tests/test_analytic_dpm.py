"""Analytic-DPM (Bao et al. 2022): Γ by Monte Carlo, σ*² minimising each KL term, the K-step bound."""

import math

import pytest
import torch

from ddpm.config import ConfigError
from ddpm.diffusion import GaussianDiffusion
from ddpm.rng import GlobalNoise
from ddpm.sampling.analytic import (
    AnalyticDiffusion,
    analytic_ddim_steps,
    analytic_ddpm_steps,
    capped_last_noise,
    chain_variances,
    estimate_gamma,
    lambda2,
    mean_coef_x0,
    optimal_variance,
    variance_bounds,
)
from ddpm.sampling.steps import run
from ddpm.schedules import Schedule, linear_betas

T = 100
M, S = 0.3, 0.5  # x_0 ~ N(M, S² I): E[ε|x_t] and hence Γ_t are known in closed form
D = 4


def full() -> GaussianDiffusion:
    return GaussianDiffusion(Schedule.from_betas(linear_betas(T, 1e-3, 0.2)), var_type="fixed_beta")


def exact_eps(d: GaussianDiffusion):
    """E[ε|x_t] = √β̄_t (x_t − √ᾱ_t M)/(ᾱ_t S² + β̄_t) for Gaussian data: the optimal ε-network."""
    ab = d.schedule.alpha_bar

    def model(x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        a = ab[step].to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (1 - a).sqrt() * (x - a.sqrt() * M) / (a * S**2 + 1 - a)

    return model


def gamma_closed_form(d: GaussianDiffusion) -> torch.Tensor:
    """Γ_t = E‖E[ε|x_t]‖²/d = β̄_t/(ᾱ_t S² + β̄_t)."""
    ab = d.schedule.alpha_bar
    return (1 - ab) / (ab * S**2 + 1 - ab)


def data(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [M + S * torch.randn(n, D, generator=g, dtype=torch.float64)]


def test_gamma_with_one_noise_stream_per_image_does_not_depend_on_the_batches():
    """The estimate of ddpm analytic-variance: image i draws from stream (seed, "analytic-gamma", i), so any split
    of the images into batches (or over processes) sums to the same Γ, up to the order of float64 additions."""
    from ddpm.rng import per_item
    from ddpm.sampling.analytic import gamma_from_sums, gamma_sums

    d, x0 = full(), data(12)[0]
    model = exact_eps(d)

    def gamma(bounds: list[tuple[int, int]]) -> torch.Tensor:
        sums = [gamma_sums(model, d, x0[a:b], per_item(3, "analytic-gamma", range(a, b))) for a, b in bounds]
        return gamma_from_sums(sums, len(x0), d.T)

    one = gamma([(0, 12)])
    for bounds in ([(0, 5), (5, 12)], [(i, i + 1) for i in range(12)], [(0, 1), (1, 11), (11, 12)]):
        torch.testing.assert_close(gamma(bounds), one, rtol=1e-13, atol=0)
    with pytest.raises(AssertionError):  # (the check can fail: another seed draws another estimate)
        torch.testing.assert_close(gamma_from_sums([gamma_sums(model, d, x0, per_item(4, "analytic-gamma",
                                                                                     range(12)))], 12, d.T), one)


def test_monte_carlo_gamma_converges_to_closed_form_like_one_over_sqrt_n():
    d = full()
    steps = [1, 10, 50, 100]
    exact = gamma_closed_form(d)[torch.tensor(steps) - 1]
    errs = []
    for n in (100, 10_000):
        g, count = estimate_gamma(exact_eps(d), d, data(n), GlobalNoise(torch.Generator().manual_seed(1)), steps)
        assert count == n
        errs.append((g[torch.tensor(steps) - 1] - exact).abs().max().item())
        assert torch.isnan(g[1])  # steps not asked for are not invented
    assert errs[1] < 0.02
    # 100× the images: the error falls by about 10× (1/√N); allow generous slack for one draw
    assert errs[1] < errs[0] / 3, errs


@pytest.mark.parametrize("eta", [1.0, 0.0])
@pytest.mark.parametrize("K", [T, 10])
def test_optimal_variance_minimises_each_kl_term_against_a_brute_force_scan(eta, K):
    d = full().with_steps(K)
    s = d.schedule
    gamma = gamma_closed_form(full())[s.timesteps]
    a_s, a_t = s.alpha_bar_prev, s.alpha_bar
    lam2 = lambda2(a_s, a_t, eta)
    sigma2 = optimal_variance(a_s, a_t, lam2, gamma, data_half_range=None)
    # the exact posterior of Gaussian data: Var[x_0|x_t] = S² β̄_t/(ᾱ_t S² + β̄_t) per coordinate, so
    # E‖μ̃_λ(x_t, x_0) − μ̃_λ(x_t, E[x_0|x_t])‖²/d = d_λ² Var[x_0|x_t] — computed through x_0, not through Γ
    spread = mean_coef_x0(a_s, a_t, lam2) ** 2 * S**2 * (1 - a_t) / (a_t * S**2 + 1 - a_t)
    for k in range(K):  # k = 0 is t = 1: λ² = 0 there for both families, the decoder term
        grid = torch.logspace(math.log10(max(lam2[k].item(), 1e-8) / 4) if lam2[k] > 0 else -8, 0, 200_001,
                              dtype=torch.float64)
        if lam2[k] > 0:
            # E KL(N(μ̃, λ²) ‖ N(μ*, σ²)) per coordinate: ½[(λ² + spread)/σ² − 1 + log σ² − log λ²]
            kl = 0.5 * ((lam2[k] + spread[k]) / grid - 1 + grid.log() - lam2[k].log())
        else:
            # λ² = 0 (DDIM, or the decoder at t = 1): the expected negative Gaussian log-density of x_s
            kl = 0.5 * (spread[k] / grid + grid.log())
        best = grid[kl.argmin()]
        assert best == pytest.approx(sigma2[k].item(), rel=2e-4), (k, best, sigma2[k])


def test_clipping_keeps_sigma2_within_theorem_2_bounds():
    s = full().with_steps(10).schedule
    a_s, a_t = s.alpha_bar_prev, s.alpha_bar
    lam2 = lambda2(a_s, a_t, 1.0)
    lo, hi = variance_bounds(a_s, a_t, lam2)
    assert torch.equal(optimal_variance(a_s, a_t, lam2, torch.full_like(a_t, 2.0)), lo)  # Γ > 1 from noise
    assert torch.equal(optimal_variance(a_s, a_t, lam2, torch.full_like(a_t, -1.0)), hi)
    assert (lo <= hi).all()


def bound_bpd(d: GaussianDiffusion, model, x0: torch.Tensor) -> float:
    out = d.bound(model, x0, GlobalNoise(torch.Generator().manual_seed(3)), clip_denoised=False, t_per_batch=10,
                  decoder="continuous")
    return out.total_bpd.mean().item()


@pytest.mark.parametrize("K", [10, 25])
def test_analytic_k_step_bound_is_at_most_the_beta_and_beta_tilde_bounds(K):
    base = full()
    model = exact_eps(base)
    x0 = data(4000, seed=5)[0]
    gamma, _ = estimate_gamma(model, base, data(2000, seed=6), GlobalNoise(torch.Generator().manual_seed(7)))
    analytic = bound_bpd(AnalyticDiffusion(base, gamma).with_steps(K), model, x0)
    beta = bound_bpd(base.with_steps(K), model, x0)
    tilde = bound_bpd(GaussianDiffusion(base.schedule, var_type="fixed_beta_tilde").with_steps(K), model, x0)
    assert analytic <= beta and analytic <= tilde, (analytic, beta, tilde)
    assert analytic < min(beta, tilde) - 0.01  # a real improvement, not a tie by noise


def test_respacing_keeps_the_estimate_and_recomputes_the_variances():
    base = full()
    a = AnalyticDiffusion(base, gamma_closed_form(base))
    b = a.with_steps(10, "quadratic")
    assert isinstance(b, AnalyticDiffusion) and b.T == 10
    assert torch.equal(b.variances, chain_variances(b.schedule, a.gamma))
    # σ*² of the full chain is below β̃'s upper companion and at least β̃ (λ² = β̃ for Analytic-DDPM)
    assert (a.variances[1:] >= a.schedule.beta_tilde[1:] * (1 - 1e-12)).all()


def test_samplers_run_and_refuse_a_diffusion_without_the_estimate():
    base = full()
    model = exact_eps(base)
    a = AnalyticDiffusion(base, gamma_closed_form(base)).with_steps(10)
    x_T = torch.randn(3, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for fn in (analytic_ddpm_steps, analytic_ddim_steps):
        x0 = run(fn(model, a, x_T, GlobalNoise(torch.Generator().manual_seed(1)), False))
        assert x0.shape == x_T.shape and torch.isfinite(x0).all()
    with pytest.raises(ConfigError, match=r"^an Analytic-DPM sampler needs the Γ estimate"):
        next(analytic_ddpm_steps(model, base, x_T))


@pytest.mark.parametrize("fn,grey_levels", [(analytic_ddpm_steps, 2.0), (analytic_ddim_steps, 1.0)])
def test_samplers_cap_the_noise_of_the_step_to_the_first_kept_time_and_the_bound_does_not(fn, grey_levels):
    """The authors' sampling runs: σ² of the step 2 → 1 of the chain at most (c·2/255)²·π/2 (c = 2 for DDPM, 1 DDIM)."""
    base = full()
    chain = AnalyticDiffusion(base, gamma_closed_form(base)).with_steps(10)  # what the bound uses: no cap
    cap = (grey_levels * 2 / 255) ** 2 * math.pi / 2
    eta = 1.0 if fn is analytic_ddpm_steps else 0.0
    uncapped = AnalyticDiffusion(base, gamma_closed_form(base), eta).with_steps(10).variances
    assert uncapped[1] > 20 * cap and torch.equal(chain.variances, AnalyticDiffusion(base, chain.gamma).with_steps(
        10).variances)  # the cap would bite, and the bound's chain keeps σ*²
    # one x_2 repeated: the spread of the x_1 the sampler draws from it is the σ² it used
    n = 20_000
    x_2 = torch.full((n, 1), 0.7, dtype=torch.float64)
    steps = list(fn(exact_eps(base), chain, x_2, GlobalNoise(torch.Generator().manual_seed(0)), False, t_start=2))
    assert [s.t for s in steps] == [2, 1]
    x_1 = steps[0].x
    assert torch.allclose(x_1.var(), torch.tensor(cap, dtype=torch.float64), rtol=0.05)  # sd of the estimate ~1%
    # and the formula itself: only index 1 changes, never upwards; a one-step chain has no noisy step
    v = torch.tensor([1e-6, 0.5, 0.3], dtype=torch.float64)
    capped = capped_last_noise(v, 17, 2.0)
    assert capped.tolist() == [1e-6, (2 * 2 / 16) ** 2 * math.pi / 2, 0.3]
    assert torch.equal(capped_last_noise(torch.tensor([1e-6, 1e-4]), 256, 2.0), torch.tensor([1e-6, 1e-4]))
    assert torch.equal(capped_last_noise(torch.tensor([0.4]), 256, 1.0), torch.tensor([0.4]))


def test_a_gamma_estimate_too_short_or_lacking_steps_is_refused():
    base = full()
    with pytest.raises(ConfigError, match=r"^the Γ estimate has 50 steps, the chain reaches step 100"):
        AnalyticDiffusion(base, torch.zeros(50))
    partial = torch.full((T,), math.nan, dtype=torch.float64)
    partial[torch.tensor([0, 99])] = 0.5
    with pytest.raises(ConfigError, match=r"^the Γ estimate lacks steps \[2, 3"):
        AnalyticDiffusion(base, partial)
    assert AnalyticDiffusion(base.with_steps(2), partial).T == 2  # the steps it has are enough for this chain
    with pytest.raises(ConfigError, match=r"^eta of Analytic-DPM must be a number in \[0, 1\], got 2"):
        AnalyticDiffusion(base, partial, eta=2)


# --- the stored estimate beside the checkpoint ---------------------------------------------------------------

def _tiny_model(tmp_path, seed: int = 0, name: str = "ck"):
    from _eval_tiny import make_checkpoint
    from ddpm.loading import load_model

    path = make_checkpoint(tmp_path / name, T=5, seed=seed)
    return path, load_model(path)


def _images(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.rand(1, 8, 8, generator=g) * 2 - 1 for _ in range(n)]


def test_estimate_is_stored_beside_the_checkpoint_reused_and_recomputed_on_request(tmp_path):
    import json

    from ddpm.evaluation.analytic_variance import analytic_diffusion, analytic_gamma, estimate_paths

    path, model = _tiny_model(tmp_path)
    gamma = analytic_gamma(path, model, _images(6), n_images=4, batch_size=3)
    tensors, record = estimate_paths(path, model.weights)
    assert tensors.parent == path.parent and tensors.is_file()
    meta = json.loads(record.read_text())
    assert meta["n_images"] == 4 and meta["T"] == 5 and meta["weights"] == model.weights
    assert gamma.shape == (5,) and torch.isfinite(gamma).all() and (gamma > 0).all()
    assert torch.equal(analytic_gamma(path, model, [], n_images=None), gamma)  # reused: no image needed
    with pytest.raises(ValueError, match=r"was estimated from 4 images, not --n-images 5; add --recompute"):
        analytic_gamma(path, model, _images(6), n_images=5)
    again = analytic_gamma(path, model, _images(6), n_images=5, recompute=True)
    assert json.loads(record.read_text())["n_images"] == 5 and again.shape == (5,)
    d = analytic_diffusion(model, again).with_steps(3)
    assert d.T == 3 and torch.isfinite(d.variances).all()


def test_another_models_estimate_is_refused(tmp_path):
    import shutil

    from ddpm.checkpoint import CheckpointError
    from ddpm.evaluation.analytic_variance import analytic_gamma, estimate_paths, read_estimate

    path, model = _tiny_model(tmp_path)
    analytic_gamma(path, model, _images(2), n_images=2)
    other_path, other = _tiny_model(tmp_path, seed=1, name="other")
    for src, dst in zip(estimate_paths(path, model.weights), estimate_paths(other_path, other.weights)):
        shutil.copy(src, dst)
    with pytest.raises(CheckpointError, match=r"other\.analytic-\w+\.json was estimated for another model \(hash "
                                              r"'[0-9a-f]{32}', this one [0-9a-f]{32}\); run `ddpm analytic-variance "
                                              r"--recompute`$"):
        read_estimate(other_path, other)
    assert analytic_gamma(other_path, other, _images(2), n_images=2, recompute=True).shape == (5,)


def test_an_edited_or_half_written_estimate_is_refused(tmp_path):
    from ddpm.checkpoint import CheckpointError
    from ddpm.evaluation.analytic_variance import analytic_gamma, estimate_paths, read_estimate

    path, model = _tiny_model(tmp_path)
    analytic_gamma(path, model, _images(2), n_images=2)
    tensors, _ = estimate_paths(path, model.weights)
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 1
    tensors.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"\.safetensors does not match the sha256 in .*\.json \(interrupted "
                                              r"write or edited file\); run `ddpm analytic-variance --recompute`$"):
        read_estimate(path, model)
    tensors.write_bytes(b"\0" * ((1 << 20) + 1))
    with pytest.raises(CheckpointError, match=r"has 1048577 bytes, more than the 1048576 an estimate holds$"):
        read_estimate(path, model)
    # a 16 GiB (sparse) tensor file is refused from its size alone: nothing of it is read
    import time
    import tracemalloc

    with open(tensors, "wb") as f:
        f.truncate(16 << 30)
    tracemalloc.start()
    tick = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"has 17179869184 bytes, more than the 1048576 an estimate holds$"):
        read_estimate(path, model)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20 and time.perf_counter() - tick < 2.0, (peak, time.perf_counter() - tick)


# --- the commands: `ddpm analytic-variance`, `ddpm nll --variance analytic` ----------------------------------

def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_analytic_variance_command_and_nll_with_the_analytic_variance(tmp_path, capsys):
    import json

    from _eval_tiny import make_checkpoint
    from ddpm.cli import main
    from ddpm.evaluation.analytic_variance import estimate_paths

    ck = make_checkpoint(tmp_path / "ck", T=6)
    assert main(["analytic-variance", "--checkpoint", str(ck), "--n-images", "3", "--batch-size", "2"]) == 0
    _, record = estimate_paths(ck, "model")
    assert "-> " + str(record) in capsys.readouterr().out
    assert json.loads(record.read_text())["n_images"] == 3
    out = tmp_path / "nll"
    assert main(["nll", "--checkpoint", str(ck), "--out", str(out), "--limit", "2", "--steps", "3",
                 "--variance", "analytic", "--no-progress"]) == 0
    s = json.loads((out / "nll.json").read_text())
    assert s["variance"] == "analytic" and s["T"] == 3 and math.isfinite(s["nll_bits_per_dim"])
    # the estimate was reused, not recomputed: a request for another image count is refused
    assert main(["nll", "--checkpoint", str(ck), "--out", str(tmp_path / "n2"), "--limit", "1",
                 "--variance", "analytic", "--n-images", "4", "--no-progress"]) == 2
    assert "was estimated from 3 images, not --n-images 4; add --recompute to replace it" in _one_line(capsys)
    assert not (tmp_path / "n2").exists()


def test_nll_refuses_another_models_estimate_and_analytic_only_options(tmp_path, capsys):
    import shutil

    from _eval_tiny import make_checkpoint
    from ddpm.cli import main
    from ddpm.evaluation.analytic_variance import estimate_paths

    a, b = make_checkpoint(tmp_path / "a", T=6, seed=0), make_checkpoint(tmp_path / "b", T=6, seed=1)
    assert main(["analytic-variance", "--checkpoint", str(a), "--n-images", "2"]) == 0
    for src, dst in zip(estimate_paths(a, "model"), estimate_paths(b, "model")):
        shutil.copy(src, dst)
    assert main(["nll", "--checkpoint", str(b), "--out", str(tmp_path / "o"), "--limit", "1",
                 "--variance", "analytic", "--no-progress"]) == 2
    assert "b.analytic-model.json was estimated for another model" in _one_line(capsys)
    assert main(["nll", "--checkpoint", str(a), "--out", str(tmp_path / "o"), "--n-images", "5"]) == 2
    assert _one_line(capsys).endswith("--n-images and --recompute apply to --variance analytic only")
    assert main(["analytic-variance", "--checkpoint", str(a), "--n-images", "0"]) == 2
    assert _one_line(capsys).endswith("--n-images must be >= 1, got 0")


def test_sample_with_the_analytic_samplers_needs_the_stored_estimate(tmp_path, capsys):
    import json

    from _eval_tiny import make_checkpoint
    from ddpm.cli import main

    ck = make_checkpoint(tmp_path / "ck", T=6)
    args = ["sample", "--checkpoint", str(ck), "--n", "2", "--steps", "3", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "s0"), "--sampler", "analytic-ddpm"]) == 2
    assert _one_line(capsys).endswith(f"ck.analytic-model.json); run `ddpm analytic-variance --checkpoint {ck}` "
                                      "first")
    assert not (tmp_path / "s0").exists()
    assert main(["analytic-variance", "--checkpoint", str(ck), "--n-images", "2"]) == 0
    for sampler in ("analytic-ddpm", "analytic-ddim"):
        out = tmp_path / sampler
        assert main([*args, "--out", str(out), "--sampler", sampler]) == 0
        assert json.loads((out / "samples.json").read_text())["sampler"] == sampler
