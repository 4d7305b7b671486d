"""The ``ddpm`` command: each subcommand module parses its arguments and calls the library."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..checkpoint import CheckpointError
from ..config import ConfigError

# subcommand modules, each with ``register(subparsers)``; a module that is not there yet is skipped
_COMMANDS = ("quickstart", "train", "evaluate", "convert", "compress")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="ddpm", description="Denoising Diffusion Probabilistic Models: train, sample, evaluate."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ddpm`` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as e:
        # user errors: one clear line, no traceback
        print(f"ddpm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
