"""The one seed rule (ddpm.rng): no collisions where the old linear mixes collided, closed purposes, and the noise
sources the mathematics takes."""

import pytest
import torch

from ddpm.config import MAX_SEED
from ddpm.rng import PURPOSES, GlobalNoise, PerItemNoise, SharedNoise, generator, numpy_rng, per_item, seed_for


def test_the_old_colliding_cases_get_distinct_seeds():
    # seed + 1 + rank: seed 0 rank 1 was seed 1 rank 0
    assert seed_for(0, "dropout", 1) != seed_for(1, "dropout", 0)
    # (seed·1_000_003 + step)·8 + stream: every (seed, step, stream) triple of a small grid
    triples = {seed_for(s, "training-noise", k, r) for s in range(20) for k in range(20) for r in range(8)}
    assert len(triples) == 20 * 20 * 8
    # seed·1_000_003 + i over a 200 × 200 grid, and seed·7919 + epoch
    assert len({seed_for(s, "sample", i) for s in range(200) for i in range(200)}) == 200 * 200
    assert seed_for(0, "data-order", 7919) != seed_for(1, "data-order", 0)
    # the number of indices is part of the stream: (seed) ≠ (seed, 0) ≠ (seed, 0, 0)
    assert len({seed_for(3, "dropout"), seed_for(3, "dropout", 0), seed_for(3, "dropout", 0, 0)}) == 3


def test_purposes_give_different_streams():
    seeds = {seed_for(5, p, 2) for p in PURPOSES}
    assert len(seeds) == len(PURPOSES)
    a = torch.randn(8, generator=generator(5, "sample", 2))
    b = torch.randn(8, generator=generator(5, "nll", 2))
    assert not torch.equal(a, b)


def test_streams_are_deterministic_and_fit_63_bits():
    assert seed_for(7, "sample", 3) == seed_for(7, "sample", 3)
    assert torch.equal(torch.randn(5, generator=generator(7, "sample", 3)),
                       torch.randn(5, generator=generator(7, "sample", 3)))
    assert numpy_rng(7, "split").permutation(50).tolist() == numpy_rng(7, "split").permutation(50).tolist()
    assert all(0 <= seed_for(s, "sample", i) < 2**63 for s in (0, 1, MAX_SEED) for i in (0, 2**64 - 1))


def test_an_unknown_purpose_is_refused():
    with pytest.raises(ValueError, match="unknown randomness purpose 'samples'"):
        seed_for(0, "samples", 1)  # type: ignore[arg-type]


@pytest.mark.parametrize("index", [-1, 1.0, True, "3", 2**64])
def test_an_index_must_be_a_non_negative_integer(index):
    with pytest.raises(ValueError, match="index"):
        seed_for(0, "sample", index)


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 0.5, False])
def test_a_seed_must_lie_in_0_to_max_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        seed_for(seed, "sample", 0)


def test_seeds_up_to_max_seed_are_accepted():
    assert seed_for(MAX_SEED, "sample", 0) != seed_for(MAX_SEED - 1, "sample", 0)
    generator(MAX_SEED, "weights")
    numpy_rng(MAX_SEED, "split").random()


def test_per_item_noise_does_not_depend_on_the_batch():
    whole = per_item(4, "sample", range(5)).randn((5, 2, 3))
    parts = torch.cat([per_item(4, "sample", range(2)).randn((2, 2, 3)),
                       per_item(4, "sample", [2, 3, 4]).randn((3, 2, 3))])
    assert torch.equal(whole, parts)
    with pytest.raises(ValueError, match="3 generators for a batch of 2"):
        per_item(4, "sample", range(3)).randn((2, 1))


def test_global_and_shared_noise():
    a = GlobalNoise(torch.Generator().manual_seed(1)).randn((3, 4))
    assert torch.equal(a, torch.randn(3, 4, generator=torch.Generator().manual_seed(1)))
    shared = SharedNoise(GlobalNoise(torch.Generator().manual_seed(1))).randn((3, 4))
    assert torch.equal(shared, a[:1].expand(3, 4))
    one = SharedNoise(PerItemNoise((torch.Generator().manual_seed(2),))).randn((4, 2))
    assert torch.equal(one[0], one[3]) and one.shape == (4, 2)
