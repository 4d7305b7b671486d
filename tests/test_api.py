"""The public API: what ``import ddpm`` offers, and the README's Python example, run as written."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import ddpm

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_exported_name_resolves_to_its_defining_module() -> None:
    for name in ddpm.__all__:
        value = getattr(ddpm, name)
        if name != "__version__":
            assert value is getattr(importlib.import_module(ddpm._EXPORTS[name]), name), name
    assert {"load_model", "sample", "GaussianDiffusion", "preset", "PRESETS", "per_item"} <= set(ddpm.__all__)


def test_import_ddpm_is_cheap() -> None:
    code = "import sys, ddpm; assert 'torch' not in sys.modules, 'import ddpm pulled in torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_readme_python_example_runs(capsys) -> None:
    block = re.search(r"## Python API\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None, "README has no Python API example"
    exec(compile(block.group(1), "README.md", "exec"), {})  # noqa: S102 (our own README)
    printed = capsys.readouterr().out.split()
    assert len(printed) == 3  # total, L_T and L_0 in bits/dim
