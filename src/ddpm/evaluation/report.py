"""A self-contained HTML report: a table of numbers and the figures (PNG files beside the page)."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..outputs import write_text


@dataclass(frozen=True)
class Figure:
    """A PNG beside the report (relative path) and its caption."""

    src: str
    caption: str


def write_report(path: str | Path, title: str, rows: Sequence[tuple[str, str]], figures: Sequence[Figure],
                 config: dict[str, Any] | None = None) -> Path:
    """Write ``path`` (an HTML page) showing ``rows`` as a table and every figure with its caption."""
    path = Path(path)
    for fig in figures:
        if not (path.parent / fig.src).is_file():
            raise FileNotFoundError(f"report figure {fig.src} is missing beside {path}")
    esc = html.escape
    table = "\n".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    figs = "\n".join(
        f'<figure><img src="{esc(f.src)}" alt="{esc(f.caption)}"><figcaption>{esc(f.caption)}</figcaption></figure>'
        for f in figures
    )
    cfg = f"<details><summary>Configuration</summary><pre>{esc(json.dumps(config, indent=2))}</pre></details>" \
        if config else ""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    write_text(path, f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} th, td {{ padding: .3em .8em; border-bottom: 1px solid #ddd;
text-align: left; vertical-align: top; }} figure {{ display: inline-block; margin: 1em 1em 1em 0; max-width: 460px; }}
img {{ max-width: 100%; image-rendering: pixelated; border: 1px solid #ccc; }} figcaption {{ font-size: .9em; }}
</style></head><body>
<h1>{esc(title)}</h1>
<p>Generated {stamp} by <code>ddpm</code>.</p>
<table>
{table}
</table>
{figs}
{cfg}
</body></html>
""")
    return path
