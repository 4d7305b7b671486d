"""The main job end to end at toy size: every output exists, the report renders, and a rerun repeats the numbers."""

import html as html_lib
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

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
    # the spread of real sets of the same size, in the results and in the report's summary
    q = a.ancestral
    assert q["real_draws"] == 20 and q["fd_real_sd"] > 0 and q["n_real"] == 8
    assert f"{q['fd_real_mean']:.2f} ± {q['fd_real_sd']:.2f}" in (out / "a" / "report.html").read_text()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture
def browser() -> str:
    found = _chromium()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed here (CI installs it)")
    return found


def _headless(browser: str, profile, *args: str) -> subprocess.CompletedProcess:
    """One headless chromium run (a fresh profile, no network) with ``args`` (an action and a URL)."""
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                           f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args],
                          capture_output=True, text=True, timeout=120)


def test_report_renders_in_a_headless_browser_with_every_image_loaded(tiny_run, tmp_path, browser):
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
    res = _headless(browser, tmp_path / "profile", "--dump-dom", probe.as_uri())
    match = re.search(r'data-loaded="(\d+)/(\d+)"', res.stdout)
    assert match, res.stderr[-2000:]
    assert match.group(1) == match.group(2) == str(n_img)


# Measures the page once loaded and posts the result to the parent page: the viewport's width, how far the page
# scrolls sideways, every image's drawn and natural width, the elements sticking out of the viewport (leaving out
# those inside a frame that scrolls: a wide plot in a phone-sized window), and where each figure sits.
_LAYOUT_PROBE = """<script>window.addEventListener('load', () => {
  const vw = window.innerWidth;
  const scrolls = e => { for (let a = e.parentElement; a && a !== document.body; a = a.parentElement)
    if (getComputedStyle(a).overflowX !== 'visible') return true; return false; };
  const box = e => e.getBoundingClientRect();
  const images = [...document.images].map(i => ({src: i.getAttribute('src'), complete: i.complete,
    shown: box(i).width, natural: i.naturalWidth, base: parseFloat(getComputedStyle(i).getPropertyValue('--w')) || 0,
    scrolled: i.parentElement.scrollWidth > i.parentElement.clientWidth + 0.5}));
  const out = [...document.body.querySelectorAll('*')].filter(e => box(e).right > vw + 0.5 && !scrolls(e))
    .map(e => e.tagName + '.' + e.className);
  const figures = [...document.querySelectorAll('figure')].map(f => ({layout: f.className, left: box(f).left,
    top: box(f).top}));
  parent.postMessage(JSON.stringify({width: vw, scroll_width: document.documentElement.scrollWidth, images, out,
    figures}), '*');
});</script>"""


def _layout_at(browser: str, page, width: int, tmp_path) -> dict:
    """The layout probe's findings for ``page`` in a viewport ``width`` CSS pixels wide.

    The page is measured inside an iframe of that width: a headless window is at least 500 px wide for
    --dump-dom (at --window-size=390 the page saw innerWidth 500), while an iframe's viewport is exactly its size.
    """
    probe = page.with_name(f"layout_probe_{width}.html")
    probe.write_text(page.read_text().replace("</body>", _LAYOUT_PROBE + "</body>"))
    host = page.with_name(f"layout_host_{width}.html")
    host.write_text(f'<!doctype html><html><body style="margin:0"><iframe src="{probe.name}" '
                    f'style="border:0; width:{width}px; height:900px"></iframe><script>'
                    "window.addEventListener('message', e => document.body.setAttribute('data-probe', e.data));"
                    "</script></body></html>")
    res = _headless(browser, tmp_path / "profile", "--window-size=1400,1000", "--dump-dom", host.as_uri())
    match = re.search(r'data-probe="([^"]*)"', res.stdout)
    assert match, res.stderr[-2000:]
    return json.loads(html_lib.unescape(match.group(1)))


@pytest.mark.parametrize("width", [1280, 390])  # a laptop's window and a phone's
def test_report_layout_fits_the_window_and_never_shrinks_a_figure(tiny_run, tmp_path, browser, width):
    out, _, _ = tiny_run
    page = out / "a" / "report.html"
    # a screenshot of the whole page, for a person to look at (--screenshot sizes the viewport itself)
    shot = tmp_path / f"report_{width}.png"
    res = _headless(browser, tmp_path / "profile", f"--window-size={width},{3600 if width < 600 else 2200}",
                    f"--screenshot={shot}", page.as_uri())
    assert shot.is_file(), res.stderr[-2000:]
    with Image.open(shot) as img:
        assert img.width == width
    found = _layout_at(browser, page, width, tmp_path)
    print(f"viewport {found['width']} px wide (asked for {width}); screenshot {shot}")
    assert found["width"] == width
    assert found["scroll_width"] <= width and found["out"] == []  # no sideways scrolling of the page
    images = found["images"]
    assert len(images) >= 6 and all(i["complete"] and i["natural"] > 0 for i in images)
    for i in images:
        assert i["shown"] >= i["natural"] - 0.5, i  # drawn at least at the PNG's own size
        if i["base"]:  # pixel art: a whole number of screen pixels per image pixel
            assert (i["shown"] / i["base"]).is_integer(), i
    grids = [f for f in found["figures"] if f["layout"] == "pixels"][:3]  # ancestral, DDIM, real digits
    assert len(grids) == 3
    if width >= 1280:  # side by side, and every figure whole without scrolling
        assert len({g["top"] for g in grids}) == 1 and not any(i["scrolled"] for i in images)
    else:  # one column
        assert len({g["left"] for g in grids}) == 1 and grids[0]["top"] < grids[1]["top"] < grids[2]["top"]
