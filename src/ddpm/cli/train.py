"""``ddpm train``: Algorithm 1 on a preset, with any config field overridden by name."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ..checkpoint import latest_checkpoint
from ..config import PRESETS, ConfigError, RunConfig, override, preset
from ..processes import is_main_process
from . import EXIT_INTERRUPTED
from .options import add_device
from .overrides import add_override_help, parse_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (Algorithm 1)",
                       description="Train a DDPM. Single process, or several with torchrun (DDP).")
    p.add_argument("--preset", help=f"named config: {', '.join(PRESETS)} (optional with --resume)")
    p.add_argument("--data", help="dataset path (CIFAR-10 archive or folder, image folder, LMDB, .npz)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, logs, sample grids)")
    p.add_argument("--resume", nargs="?", const="latest", choices=("latest", "latest-valid"),
                   help="continue the run in --out from its latest checkpoint; 'latest-valid' skips (and sets "
                        "aside) damaged checkpoints and continues from the newest intact one")
    p.add_argument("--overwrite", action="store_true",
                   help="train into an --out that already holds files other than a ddpm run")
    add_device(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
    add_override_help(p)
    p.set_defaults(func=run, accepts_overrides=True)


def resolve(args: argparse.Namespace) -> RunConfig:
    """The preset (or the resumed run's config) with --data and the overrides applied."""
    changes = parse_overrides(args.overrides)
    if args.data:
        given = [k for k in ("path", "data.path") if k in changes]
        if given:
            raise ConfigError(f"--data and --{given[0]} both set data.path: give it once")
        changes["data.path"] = args.data
    if args.preset:
        cfg = preset(args.preset)
    elif args.resume:
        saved = Path(args.out) / "config.json"
        if not saved.exists():
            raise FileNotFoundError(f"--resume without --preset needs {saved}")
        try:
            cfg = RunConfig.from_dict(json.loads(saved.read_text()))
        except (ValueError, RecursionError) as e:
            raise ConfigError(f"{saved} is not a readable run config: {e}") from None
    else:
        raise ConfigError("--preset is required (or --resume an existing run)")
    return override(cfg, **changes) if changes else cfg


def run(args: argparse.Namespace) -> int:
    cfg = resolve(args)
    if args.show_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from ..train import train

    try:
        result = train(cfg, args.out, resume=args.resume or False, device=args.device,
                       progress=not args.no_progress, overwrite=args.overwrite)
    except KeyboardInterrupt:
        if is_main_process():  # (every process of a torchrun run is interrupted; one line is enough)
            print(interrupted_line(args.out), file=sys.stderr)
        return EXIT_INTERRUPTED
    if is_main_process():  # (one line for all the processes of a torchrun run)
        print(f"trained {cfg.name} to step {result.step} in {result.run_dir}")
    return 0


def interrupted_line(out: str | Path) -> str:
    """What a Ctrl-C leaves in the run directory ``out``: the checkpoint a ``--resume`` continues from, or none.

    Checkpoints are only ever renamed into place whole (``ddpm.checkpoint``), so the latest complete one is intact
    whatever step the interrupt came in.
    """
    latest = latest_checkpoint(out)
    if latest is None:
        return (f"ddpm train: interrupted before the first checkpoint was written: {out} holds nothing to resume; "
                "run the same command again to start over")
    step = int(latest.name.removeprefix("step_"))  # (list_checkpoints names only step_<digits> directories)
    return (f"ddpm train: interrupted; the last checkpoint, step {step} ({latest}), is intact: continue with "
            f"`ddpm train --out {shlex.quote(str(out))} --resume` (the steps trained since it are trained again, "
            "identically)")
