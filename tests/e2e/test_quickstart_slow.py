"""The full quickstart (about 7 minutes on 2 idle cores): the samples must be recognisable digits.

Its wall time is measured and reported in the README, not asserted here (timings depend on the machine's load).
"""

import pytest

from ddpm.quickstart import QuickstartOptions, quickstart

FD_FACTOR = 2.0         # the README's criterion: Fréchet distance within 2× the real-vs-real baseline
CONFIDENCE_GAP = 0.1    # and the classifier's mean confidence within 0.1 of that on real digits


@pytest.mark.slow
def test_full_quickstart_gives_recognisable_digits(tmp_path):
    r = quickstart(tmp_path / "qs", QuickstartOptions(progress=False))
    for name, q in (("ancestral", r.ancestral), (r.few_step["sampler"], r.few_step)):
        assert q["fd"] < FD_FACTOR * q["fd_real_vs_real"], (name, q)
        assert q["confidence"] > q["confidence_real"] - CONFIDENCE_GAP, (name, q)
    assert r.test_nll_bits_per_dim < 4.09  # log2(17): better than a uniform code over the 17 levels
