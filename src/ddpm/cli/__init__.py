"""The ``ddpm`` command: each subcommand module parses its arguments and calls the library."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

# subcommand modules, each with ``register(subparsers)``; a module that is not there yet is skipped
_COMMANDS = ("quickstart", "train", "evaluate", "convert", "compress")
DEBUG_ENV = "DDPM_DEBUG"  # set to 1 to see the traceback of every error, as --debug does
EXIT_INTERRUPTED = 130  # a Ctrl-C: 128 + SIGINT, as a shell reports it


class _StoreOnce(argparse._StoreAction):
    """argparse's "store", except that an option given twice (under any of its spellings) is an error."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        seen = namespace.__dict__.setdefault("_given_once", set())
        if option_string is not None and self.dest in seen:
            parser.error(f"option {option_string} is given twice (or under two spellings): give it once")
        seen.add(self.dest)
        super().__call__(parser, namespace, values, option_string)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage is one ``--help`` away) and no option silently given twice."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand."""
    import importlib

    parser = Parser(prog="ddpm", description="Denoising Diffusion Probabilistic Models: train, sample, evaluate.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of an error (or set {DEBUG_ENV}=1)")
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


def command_parser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser:
    """The parser of subcommand ``command`` (``parser`` itself when there is none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


def describe_error(e: BaseException) -> tuple[str, int]:
    """One line for an error and the exit code: 2 for what a user can cause and mend, 1 for a bug of ours."""
    from ..train import NonFiniteError

    if isinstance(e, (ValueError, NonFiniteError)):  # our error classes (ConfigError, CheckpointError, ...) included
        return " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip()) or type(e).__name__, 2
    if isinstance(e, OSError):  # a missing, unreadable or read-only path, a full disk, ...
        what = e.strerror or str(e) or type(e).__name__
        if e.errno == errno.ENOSPC:
            what = "no space left on the device"
        where = f": {e.filename}" if e.filename else ""
        also = f" -> {e.filename2}" if getattr(e, "filename2", None) else ""
        return f"{what}{where}{also}", 2
    if isinstance(e, MemoryError):
        return "out of memory (try a smaller --batch-size)", 2
    detail = str(e).splitlines()[0] if str(e) else ""
    return (f"internal error {type(e).__name__}{': ' + detail if detail else ''} — this is a bug in ddpm; "
            f"rerun with --debug for the traceback and report it"), 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ddpm`` console script."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "accepts_overrides", False):  # named with its command: "ddpm sample: ..."
            command_parser(parser, getattr(args, "command", None)).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # argparse has printed its one line (or the help)
        return e.code if isinstance(e.code, int) else 2
    args.overrides = extra
    # information to stdout, warnings and errors to stderr: a user error is the one line there
    info, problems = logging.StreamHandler(sys.stdout), logging.StreamHandler(sys.stderr)
    info.addFilter(lambda record: record.levelno < logging.WARNING)
    problems.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s",
                        handlers=[info, problems])
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"ddpm {args.command}: interrupted", file=sys.stderr)  # (ddpm train says what it keeps itself)
        return EXIT_INTERRUPTED
    except Exception as e:
        if debug:
            raise
        line, code = describe_error(e)
        print(f"ddpm {args.command}: error: {line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
