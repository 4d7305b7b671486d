"""Command-line options from the options dataclasses: each field's default, type and choices are written once, there.

``add_options(parser, NLLOptions, HELP)`` adds one option per field that ``HELP`` describes, taking from the field
its default (an option without one is required), its type (``int``; ``float`` as ``finite_float``;
``tuple[int, ...]`` as ``int_list``), its choices (a ``Literal[...]`` annotation) and, for a bool, its action
(``--x`` sets a field that defaults to False, ``--no-x`` clears one that defaults to True; a ``bool | None``
that defaults to None takes either). A field that is itself
an options dataclass (``data: DataChoice = DataChoice("train")``) adds its own fields, with the defaults of that
default. ``build(NLLOptions, args)`` then makes the options by name from the parsed namespace; the values are
checked there, by the dataclass, in the same words for Python callers and the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from ..processes import DEFAULT_DEVICE
from .types import finite_float, int_list

T = TypeVar("T")

DEVICE_HELP = ("auto: the GPU if torch sees one (cuda:LOCAL_RANK under torchrun), else the CPU; or cpu, cuda, "
               "cuda:N, mps")


@dataclass(frozen=True)
class Flag:
    """How one field is spelled on the command line, when its name alone does not say it."""

    help: str
    names: tuple[str, ...] = ()                   # spellings; default --field-name (--no-field-name: a True bool)
    type: Callable[[str], Any] | None = None      # converter, instead of the annotation's
    choices: tuple[Any, ...] | None = None        # for a field whose annotation cannot list them (a registry's keys)


Help = Mapping[str, str | Flag]  # field name -> its help text, or its Flag


def option_names(name: str, default: object) -> tuple[str, ...]:
    """``t_batch`` → ``('--t-batch',)``; a bool that defaults to True is turned off: ``('--no-progress',)``."""
    flag = name.replace("_", "-")
    return (f"--no-{flag}",) if default is True else (f"--{flag}",)


def _plain(annotation: Any) -> Any:
    """The annotation without ``| None``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _kind(annotation: Any) -> dict[str, Any]:
    """argparse's ``type``/``choices`` for a field's annotation."""
    plain = _plain(annotation)
    if typing.get_origin(plain) is Literal:
        return {"choices": typing.get_args(plain)}
    if typing.get_origin(plain) is tuple and typing.get_args(plain) == (int, ...):
        return {"type": int_list}
    converters: dict[Any, Callable[[str], Any]] = {int: int, float: finite_float, str: str}
    if plain not in converters:
        raise TypeError(f"no command-line type for {annotation!r}: give the field a Flag(type=...)")
    return {"type": converters[plain]}


def _with_default(text: str, default: object) -> str:
    """The help text with the default appended (a None default is said in words; bools and required ones need none).

    A tuple is shown as it is typed: ``(default 10,20,50)``.
    """
    if default is None or default is dataclasses.MISSING or isinstance(default, bool):
        return text
    if isinstance(default, tuple):
        default = ",".join(str(v) for v in default)
    return f"{text} (default {default})"


def is_options(annotation: Any) -> bool:
    """Whether a field holds an options dataclass of its own (e.g. ``data: DataChoice``)."""
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def add_options(parser: argparse.ArgumentParser, cls: type, helps: Help,
                defaults: Mapping[str, Any] | None = None) -> None:
    """An option per field of ``cls`` named in ``helps``; ``defaults`` replaces a field's default for this command."""
    _add_fields(parser, cls, helps, defaults or {}, None)


def _add_fields(parser: argparse.ArgumentParser, cls: type, helps: Help, defaults: Mapping[str, Any],
                instance: object) -> None:
    """``add_options``, the defaults read from ``instance`` when there is one (a nested field's default)."""
    hints = typing.get_type_hints(cls)
    taken = {a.dest for a in parser._actions}
    for f in dataclasses.fields(cls):
        if instance is not None:
            default = getattr(instance, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        default = defaults.get(f.name, default)
        if is_options(hints[f.name]):
            _add_fields(parser, hints[f.name], helps, defaults,
                        hints[f.name]() if default is dataclasses.MISSING else default)
            continue
        if f.name not in helps:
            continue  # not a command-line option (e.g. a Python object, or a knob the command leaves alone)
        if f.name in taken:
            raise ValueError(f"field {cls.__name__}.{f.name} would share the option of an earlier one")
        spec = helps[f.name]
        flag = spec if isinstance(spec, Flag) else Flag(spec)
        names = flag.names or option_names(f.name, default)
        kwargs: dict[str, Any] = {"dest": f.name, "help": _with_default(flag.help, default)}
        if default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        if _plain(hints[f.name]) is bool and default is None:  # three ways: --x, --no-x, or neither (decided later)
            kwargs["action"] = argparse.BooleanOptionalAction
        elif _plain(hints[f.name]) is bool:
            kwargs["action"] = "store_false" if default is True else "store_true"
        else:
            kwargs.update({"type": flag.type} if flag.type else _kind(hints[f.name]))
            if flag.choices is not None:
                kwargs["choices"] = flag.choices
            kwargs["metavar"] = names[0].lstrip("-").replace("-", "_").upper() if "choices" not in kwargs else None
        parser.add_argument(*names, **kwargs)


def build(cls: type[T], args: argparse.Namespace) -> T:
    """``cls`` made by name from the parsed options (nested options dataclasses too); absent fields keep defaults."""
    return cls(**_values(cls, args))


def _values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``cls`` that ``args`` holds, by name; a nested options dataclass only if it holds some."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if is_options(hints[f.name]):
            nested = _values(hints[f.name], args)
            if nested:
                values[f.name] = hints[f.name](**nested)
        elif hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    return values


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device`` for a command without an options dataclass (``ddpm train``), with every command's default."""
    parser.add_argument("--device", default=DEFAULT_DEVICE, help=_with_default(DEVICE_HELP, DEFAULT_DEVICE))
