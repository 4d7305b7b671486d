"""Every relative link and image in the README, docs/ and the committed report points at a file of the repository.

A clean clone has only the committed files, so a figure that was written but never committed (an over-broad
``.gitignore`` pattern once hid docs/quickstart/'s sampler figure this way) fails here in CI.
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "docs").rglob("*.html")),
         ROOT / "benchmarks" / "README.md"]
_MD_LINK = re.compile(r"\]\(([^)\s]+)\)")              # [text](target) and ![alt](target)
_HTML_LINK = re.compile(r"""(?:src|href)=["']([^"']+)["']""")


@functools.cache
def committed_files() -> frozenset[Path] | None:
    """The files git tracks (staged included), or None outside a git checkout (then existence is checked)."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return frozenset((ROOT / name).resolve() for name in out.decode().split("\0") if name)


def relative_targets(page: Path) -> list[str]:
    """The link targets of a page that name a file beside it: no URL scheme, no pure #anchor."""
    text = page.read_text()
    found = _MD_LINK.findall(text) + _HTML_LINK.findall(text)
    targets = [t.split("#", 1)[0] for t in found]
    return [t for t in targets if t and not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_the_pages_have_links_to_check() -> None:
    assert len(relative_targets(ROOT / "README.md")) >= 5
    assert "samplers.png" in relative_targets(ROOT / "docs" / "quickstart" / "report.html")


def test_relative_targets_skips_urls_and_anchors(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("[a](https://x.org/y) [b](#top) ![c](img/c.png) [d](other.md#part) <img src='e.png'>")
    assert relative_targets(page) == ["img/c.png", "other.md", "e.png"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    tracked = committed_files()
    targets = [(t, (page.parent / t).resolve()) for t in relative_targets(page)]
    missing = [t for t, path in targets
               if not path.exists() or (tracked is not None and path.is_file() and path not in tracked)]
    assert not missing, f"{page.relative_to(ROOT)} links to files that are not in the repository: {missing}"
