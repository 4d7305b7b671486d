"""Config overrides from the command line: ``--lr 1e-4`` or ``--train.lr 1e-4`` for any config field."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from typing import Any

from ..config import (
    ALIASES,
    ConfigError,
    DataConfig,
    DiffusionConfig,
    MLPConfig,
    TrainConfig,
    UNetConfig,
    moved_hint,
    shown,
)

_SECTIONS = {"model": (UNetConfig, MLPConfig), "diffusion": (DiffusionConfig,), "data": (DataConfig,),
             "train": (TrainConfig,)}


def field_names() -> set[str]:
    """Every overridable name, bare and dotted."""
    names = set(ALIASES)  # e.g. channels (model.in_channels)
    for sec, classes in _SECTIONS.items():
        for cls in classes:
            for f in fields(cls):
                if f.name != "kind":
                    names.update({f.name, f"{sec}.{f.name}"})
    return names


def parse_value(text: str) -> Any:
    """A command-line value as JSON when it parses (numbers, true/false, lists), else as a string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    if "," in text and not text.startswith("["):
        return [parse_value(p) for p in text.split(",")]
    try:
        return json.loads(text)
    except ValueError:  # not JSON (JSONDecodeError), or an integer of more digits than Python converts
        return text


def _cut(text: str, limit: int = 80) -> str:
    """An option name as the user wrote it, cut short (a hostile one still makes one short line)."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def parse_overrides(extra: list[str]) -> dict[str, Any]:
    """``['--lr', '1e-4', '--train.batch_size=64']`` → ``{'lr': 1e-4, 'train.batch_size': 64}``."""
    known = field_names()
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}  # key -> the option as the user wrote it
    i = 0
    while i < len(extra):
        tok = extra[i]
        if not tok.startswith("--"):
            raise ConfigError(f"unexpected argument {shown(tok)}; overrides look like --name VALUE")
        key, eq, value = tok[2:].partition("=")
        option = _cut(f"--{key}")
        key = key.replace("-", "_")
        if eq and not value:
            raise ConfigError(f"option {option} needs a value after '='")
        if not eq:
            if i + 1 >= len(extra):
                raise ConfigError(f"option {option} needs a value")
            value = extra[i + 1]
            i += 1
        if key not in known:
            raise ConfigError(f"unknown option {option}{moved_hint(key)}")
        if key in out:  # "the last wins" would hide a typo or a stale line in a script
            raise ConfigError(f"option {option} is given twice (as {spelled[key]} and {option}): give it once")
        out[key] = parse_value(value)
        spelled[key] = option
        i += 1
    return out


def add_override_help(parser: argparse.ArgumentParser) -> None:
    """Document the override mechanism in a subcommand's help."""
    parser.epilog = (
        "Any config field can be overridden by name, e.g. --lr 1e-4 --batch_size 64 --T 1000 "
        "--var_type fixed_beta_tilde (dotted names such as --train.lr also work). "
        "See `ddpm train --preset NAME --show-config`."
    )
