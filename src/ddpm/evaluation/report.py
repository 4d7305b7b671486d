"""A self-contained HTML report: a table of numbers and the figures (PNG files beside the page).

Every figure is drawn at least at its PNG's own size, never shrunk: plots are made the column's width
(``COLUMN_PX``, used by ``figures.py``), pixel art (image grids) is enlarged by a whole number of screen pixels
per image pixel. Where a window is narrower than a figure, the figure scrolls inside its own frame.
"""

from __future__ import annotations

import html
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from ..outputs import write_text

COLUMN_PX = 1200      # the page's widest column in CSS pixels; wide plots are drawn exactly this wide
PIXEL_ART_SCALE = 3   # screen pixels per image pixel of pixel art in windows under _WIDER_PX (one more above)
_WIDER_PX = 420       # a 10-wide grid of 8-pixel digits, 4× and in its card, fits from here on
_GUTTER_PX = 12       # the page's margin either side of the column
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Layout = Literal["card", "wide", "pixels"]


@dataclass(frozen=True)
class Figure:
    """A PNG beside the report (relative path), its caption, and how it is laid out.

    ``layout``: "card" sits beside other cards at its own size; "wide" takes a row of the column (a plot drawn
    ``COLUMN_PX`` wide; in a narrower window it scrolls sideways); "pixels" is pixel art shown enlarged with sharp
    pixels, its PNG already upscaled ``scale``× (an image pixel is ``scale`` × ``scale`` PNG pixels).
    """

    src: str
    caption: str
    layout: Layout = "card"
    scale: int = 1

    def __post_init__(self) -> None:
        if self.layout not in ("card", "wide", "pixels"):
            raise ValueError(f"figure layout must be card, wide or pixels, got {self.layout!r}")
        if self.scale < 1:
            raise ValueError(f"figure scale must be at least 1, got {self.scale}")


def png_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of a PNG file, read from its header."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError(f"report figure {path} is not a PNG file")
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def _figure_html(fig: Figure, size: tuple[int, int]) -> str:
    """One <figure>: the image at (at least) its native ``size`` in a frame that scrolls if the window is narrower."""
    w, h = size
    style = ""
    if fig.layout == "pixels":
        if w % fig.scale or h % fig.scale:
            raise ValueError(f"report figure {fig.src} ({w}×{h}) is not made of {fig.scale}×{fig.scale} pixels")
        style = f' style="--w: {w // fig.scale}px; --s: {fig.scale}"'  # CSS: width = (w / s) × max(k, s)
    esc = html.escape
    return (f'<figure class="{fig.layout}"><div class="frame"><img src="{esc(fig.src)}" alt="{esc(fig.caption)}" '
            f'width="{w}" height="{h}"{style}></div><figcaption>{esc(fig.caption)}</figcaption></figure>')


# --k: screen pixels per image pixel of pixel art (never fewer than its PNG has, --s)
_CSS = f"""
:root {{ --k: {PIXEL_ART_SCALE}; color-scheme: light; }}
@media (min-width: {_WIDER_PX}px) {{ :root {{ --k: {PIXEL_ART_SCALE + 1}; }} }}
* {{ box-sizing: border-box; }}
html {{ -webkit-text-size-adjust: 100%; }}
body {{ font-family: system-ui, sans-serif; line-height: 1.45; color: #222; background: #fff; margin: 0; }}
main {{ max-width: {COLUMN_PX}px; margin: 0 auto; padding: 1.5em {_GUTTER_PX}px 3em; box-sizing: content-box; }}
h1 {{ font-size: 1.6em; line-height: 1.2; margin: 0 0 .3em; }}
.meta {{ color: #555; margin: 0 0 1em; }}
.scroll, .frame, pre {{ overflow-x: auto; max-width: 100%; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: .35em .8em .35em 0; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }}
th {{ font-weight: 600; }}
td {{ font-variant-numeric: tabular-nums; }}
.figures {{ display: flex; flex-wrap: wrap; gap: 20px; align-items: flex-start; margin: 1.5em 0; }}
figure {{ margin: 0; max-width: 100%; min-width: 0; }}
figure.card, figure.pixels {{ width: min-content; padding: 8px; border: 1px solid #ddd; border-radius: 6px;
  background: #fafafa; }}
figure.wide {{ flex: 1 1 100%; }}
img {{ display: block; max-width: none; }}
figure.pixels img {{ width: calc(var(--w) * max(var(--k), var(--s))); height: auto; image-rendering: pixelated; }}
figcaption {{ font-size: .9em; color: #444; margin-top: .4em; }}
@media (max-width: 600px) {{
  th, td {{ display: block; padding-right: 0; }}
  th {{ border-bottom: 0; padding-bottom: 0; }}
  .figures {{ justify-content: center; }}
}}
@media (max-width: {COLUMN_PX + 2 * _GUTTER_PX - 1}px) {{
  figure.wide figcaption::after {{ content: " (the figure scrolls sideways)"; color: #777; }}
}}
"""


def write_report(path: str | Path, title: str, rows: Sequence[tuple[str, str]], figures: Sequence[Figure],
                 config: dict[str, Any] | None = None) -> Path:
    """Write ``path`` (an HTML page) showing ``rows`` as a table and every figure with its caption."""
    path = Path(path)
    for fig in figures:
        if not (path.parent / fig.src).is_file():
            raise FileNotFoundError(f"report figure {fig.src} is missing beside {path}")
    esc = html.escape
    table = "\n".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    figs = "\n".join(_figure_html(f, png_size(path.parent / f.src)) for f in figures)
    cfg = f"<details><summary>Configuration</summary><pre>{esc(json.dumps(config, indent=2))}</pre></details>" \
        if config else ""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    write_text(path, f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{_CSS}</style></head><body><main>
<h1>{esc(title)}</h1>
<p class="meta">Generated {stamp} by <code>ddpm</code>.</p>
<div class="scroll"><table>
{table}
</table></div>
<div class="figures">
{figs}
</div>
{cfg}
</main></body></html>
""")
    return path
