"""The floors of docs/architecture.md: no module imports from a floor above its own."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "ddpm"
FLOORS = {
    "config": 0, "schedules": 0, "likelihood": 0, "outputs": 0, "untrusted_pickle": 0,
    "diffusion": 1, "nets": 1, "data": 1, "checkpoint": 1, "images": 1, "processes": 1, "rng": 1,
    "sampling": 2, "loading": 2, "evaluation": 2, "interop": 2, "compression": 2,
    "train": 3,
    "quickstart": 4,
    "cli": 5,
}


def top_module(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def imported_top_modules(path: Path) -> set[str]:
    """Project modules that ``path`` imports (absolute ``ddpm.x`` or relative), by their top-level name."""
    tree = ast.parse(path.read_text())
    here = path.relative_to(SRC).parts[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[: len(here) - node.level + 1]) if node.level > 1 else list(here)
                parts = base + (node.module.split(".") if node.module else [])
                names = [parts] if parts else [[a.name] for a in node.names]
            elif node.module and node.module.split(".")[0] == "ddpm":
                names = [node.module.split(".")[1:]] or []
            else:
                continue
            for parts in names:
                if parts:
                    out.add(parts[0])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("ddpm."):
                    out.add(a.name.split(".")[1])
    return out


def test_every_module_has_a_floor():
    tops = {top_module(p) for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent != SRC}
    assert tops - {"__init__"} <= set(FLOORS), tops - set(FLOORS)


def test_no_module_imports_from_a_floor_above():
    bad = []
    for path in SRC.rglob("*.py"):
        if path.parent == SRC and path.name == "__init__.py":
            continue
        mine = top_module(path)
        for other in imported_top_modules(path):
            if other in FLOORS and FLOORS[other] > FLOORS[mine]:
                bad.append(f"{path.relative_to(SRC)} (floor {FLOORS[mine]}) imports {other} (floor {FLOORS[other]})")
    assert not bad, "\n".join(bad)
