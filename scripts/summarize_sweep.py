"""Rank the jobs of a sweep: `python src/sweep.py`'s, or a Hydra multirun's (`python src/train.py -m`).

    python scripts/summarize_sweep.py <sweep dir>

Prints one row per job (the overrides that differ between jobs, its state: complete, pruned,
running, interrupted or failed, best val/mIoU and its epoch, epochs trained, wall time, and the slot
and devices it ran on), best first, and writes the same table to <sweep dir>/summary.csv and
summary.md. A running sweep can be summarised at any time. For an Optuna search it also writes
Optuna's optimisation history, parameter importance and intermediate-value plots as PNG.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# `python scripts/summarize_sweep.py` puts scripts/ on sys.path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from src.sweeps.summary import summarize  # noqa: E402

__all__ = ["summarize"]


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a src/sweep.py sweep dir or a Hydra multirun dir")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        raise SystemExit(f"summarize_sweep: {args.sweep_dir} is not a directory")
    summarize(args.sweep_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
