"""The main job end to end at toy size: every output exists, the report renders, and a rerun repeats the numbers."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from ddpm.quickstart import COMPARED, QuickstartOptions, quickstart

TINY = QuickstartOptions(steps=6, n_samples=8, sampler_steps=5, compare_steps=(3, 5), nll_images=4, t_per_batch=250,
                         progress=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, monkeypatch_module):
    # a small U-Net so that the full pipeline (T = 1000 sampling and bound) runs in seconds
    from ddpm import config

    small = config.override(config.PRESETS["digits"], base_channels=16, channel_mults=[1, 2], num_groups=8,
                            batch_size=32)
    monkeypatch_module.setitem(config.PRESETS, "digits", small)
    out = tmp_path_factory.mktemp("qs")
    return out, quickstart(out / "a", TINY), quickstart(out / "b", TINY)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_outputs_and_same_numbers_on_a_second_run(tiny_run):
    out, a, b = tiny_run
    for name in ("report.html", "results.json", "samples_ancestral.png", "samples_sde-dpm++2m.png", "progressive.png",
                 "rate_distortion.png", "samplers.png", "loss.png", "real_test.png"):
        assert (out / "a" / name).is_file(), name
    ra = json.loads((out / "a" / "results.json").read_text())
    rb = json.loads((out / "b" / "results.json").read_text())
    for key in ("test_nll_bits_per_dim", "prior_bits_per_dim", "decoder_bits_per_dim", "ancestral", "few_step",
                "comparison"):
        assert ra[key] == rb[key], key
    assert 0 < a.test_nll_bits_per_dim < 20 and a.ancestral["steps"] == 1000
    assert (a.few_step["sampler"], a.few_step["steps"]) == ("sde-dpm++2m", 5)
    # each compared sampler at each step count; the shown one is among them, not drawn twice
    assert sorted((c["sampler"], c["steps"]) for c in a.comparison) == sorted(
        (name, k) for name in COMPARED for k in (3, 5))
    assert a.few_step in a.comparison
    # the samples as `ddpm sample` writes them: uint8 NHWC under "images", as many as asked for
    for name in ("samples_ancestral.npz", "samples_sde-dpm++2m.npz"):
        with np.load(out / "a" / name) as z:
            assert z["images"].dtype == np.uint8 and z["images"].shape == (8, 8, 8, 1)
    # what the timings were measured on
    assert ra["machine"]["cpu"] and ra["machine"]["torch"] == torch.__version__
    assert ra["machine"]["torch_threads"] == torch.get_num_threads()
    assert set(ra["seconds"]) == {"train_s", "ancestral_s", "few_step_s", "nll_s", "quality_s"}
    assert a.ancestral["fd_real_vs_real"] > 0


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_renders_in_a_headless_browser_with_every_image_loaded(tiny_run, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed here (CI installs it)")
    out, _, _ = tiny_run
    page = out / "a" / "report.html"
    html = page.read_text()
    n_img = len(re.findall(r"<img ", html))
    assert n_img >= 6
    # a copy of the page that records, once loaded, how many images decoded with a real size
    probe = page.with_name("probe.html")
    probe.write_text(html.replace("</body>", "<script>window.addEventListener('load', () => {"
                     "const ok = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;"
                     "document.body.setAttribute('data-loaded', ok + '/' + document.images.length);});"
                     "</script></body>"))
    res = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120)
    match = re.search(r'data-loaded="(\d+)/(\d+)"', res.stdout)
    assert match, res.stderr[-2000:]
    assert match.group(1) == match.group(2) == str(n_img)
