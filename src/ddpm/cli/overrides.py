"""Config overrides from the command line: ``--lr 1e-4`` or ``--train.lr 1e-4`` for any config field."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from typing import Any

from ..config import ConfigError, DataConfig, DiffusionConfig, MLPConfig, TrainConfig, UNetConfig

_SECTIONS = {"model": (UNetConfig, MLPConfig), "diffusion": (DiffusionConfig,), "data": (DataConfig,),
             "train": (TrainConfig,)}


def field_names() -> set[str]:
    """Every overridable name, bare and dotted."""
    names = {"image_size", "channels"}
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
    except json.JSONDecodeError:
        return text


def parse_overrides(extra: list[str]) -> dict[str, Any]:
    """``['--lr', '1e-4', '--train.batch_size=64']`` → ``{'lr': 1e-4, 'train.batch_size': 64}``."""
    known = field_names()
    out: dict[str, Any] = {}
    i = 0
    while i < len(extra):
        tok = extra[i]
        if not tok.startswith("--"):
            raise ConfigError(f"unexpected argument {tok!r}; overrides look like --name VALUE")
        key, _, value = tok[2:].partition("=")
        key = key.replace("-", "_")
        if not value:
            if i + 1 >= len(extra):
                raise ConfigError(f"option --{key} needs a value")
            value = extra[i + 1]
            i += 1
        if key not in known:
            raise ConfigError(f"unknown option --{key}")
        out[key] = parse_value(value)
        i += 1
    return out


def add_override_help(parser: argparse.ArgumentParser) -> None:
    """Document the override mechanism in a subcommand's help."""
    parser.epilog = (
        "Any config field can be overridden by name, e.g. --lr 1e-4 --batch_size 64 --T 1000 "
        "--var_type fixed_beta_tilde (dotted names such as --train.lr also work). "
        "See `ddpm train --preset NAME --show-config`."
    )
