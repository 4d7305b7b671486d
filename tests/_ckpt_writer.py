"""Save checkpoints in an endless loop until killed (driven by tests/test_checkpoint.py).

Usage: python _ckpt_writer.py RUN_DIR FIRST_STEP N_FLOATS KEEP

Step s holds model["w"] = arange(N) + s and ema["w"] = arange(N) - s, so a reader can check that
every tensor belongs to the step its directory names. Prints each step once it is saved.
"""

from __future__ import annotations

import sys

import torch

from ddpm.checkpoint import Checkpoint, save_checkpoint


def main() -> None:
    """Write step after step into the run directory given on the command line."""
    run_dir, step, n, keep = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    base = torch.arange(n, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    while True:
        ckpt = Checkpoint(
            step=step,
            config={"name": "writer"},
            model={"w": base + step, "b": torch.full((7,), step, dtype=torch.int64)},
            ema={"w": base - step},
            optimizer={"state": {0: {"step": torch.tensor(float(step))}}, "param_groups": [{"params": [0]}]},
            tensors={"rng": gen.get_state()},
            extra={"step": step},
        )
        save_checkpoint(run_dir, ckpt, keep=keep)
        print(step, flush=True)
        step += 1


if __name__ == "__main__":
    main()
