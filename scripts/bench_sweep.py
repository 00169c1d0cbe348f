"""Wall time of the 8-job smoke grid: `python src/train.py -m` against `python src/sweep.py` in slots.

    python scripts/bench_sweep.py [--slots 2] [--quick] [--keep DIR]

The grid is `debug=smoke loss=focal_dice loss.focal.gamma=0,1,2,5 loss.class_weights=null,auto`
(8 seconds-long CPU runs). `-m` runs its jobs one after another in one process; the runner runs
them in `--slots` processes at once, each with its share of the cores. The data and the `auto` class
weights are prepared once before either is timed, so neither pays for them. Prints both times,
their ratio and the host. `--quick` runs a 2-job grid, to check that the script works.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GRID = ("debug=smoke", "loss=focal_dice", "loss.focal.gamma=0,1,2,5", "loss.class_weights=null,auto")
QUICK_GRID = ("debug=smoke", "loss=focal_dice", "loss.focal.gamma=0,2", "loss.class_weights=auto")


def prepare_data(paths: list[str]) -> None:
    """Generate the synthetic data and its `auto` class weights (cached beside it) before timing."""
    from hydra import compose, initialize_config_dir

    from src.utils.build import build_datamodule, build_loss

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", ["debug=smoke", "loss=focal_dice", "loss.class_weights=auto", *paths])
    build_loss(cfg.loss, build_datamodule(cfg.data))


def timed(command: list[str], log: Path) -> float:
    """Run `command` from the repository root with its output in `log`; its wall time in seconds."""
    started = time.perf_counter()
    with log.open("w") as sink:
        done = subprocess.run(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench_sweep: {' '.join(command[1:3])} failed ({done.returncode}); see {log}")
    return elapsed


def main(argv: list[str] | None = None) -> None:
    """Time both ways and print them side by side."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slots", type=int, default=2, help="the runner's sweep.slots")
    parser.add_argument("--quick", action="store_true", help="a 2-job grid (checks the script)")
    parser.add_argument("--keep", type=Path, help="write the runs here instead of a temporary dir")
    args = parser.parse_args(argv)
    grid = QUICK_GRID if args.quick else GRID
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    paths = [f"paths.data_dir={work}/data", f"paths.log_dir={work}/logs"]
    prepare_data(paths)

    python = sys.executable
    multirun = timed([python, "src/train.py", "-m", *grid, *paths, f"hydra.sweep.dir={work}/multirun"], work / "multirun.log")
    runner = [python, "src/sweep.py", *grid, *paths, f"sweep.slots={args.slots}", f"hydra.sweep.dir={work}/sweep"]
    slotted = timed(runner, work / "sweep.log")

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"grid: {' '.join(grid)}")
    print(f"host: {platform.node()}, {cores} cores ({platform.processor() or platform.machine()}), {datetime.date.today()}")
    print(f"{'python src/train.py -m (one job at a time)':<44} {multirun:8.1f} s")
    print(f"{f'python src/sweep.py sweep.slots={args.slots}':<44} {slotted:8.1f} s")
    print(f"{'ratio (-m / sweep)':<44} {multirun / slotted:8.2f}")
    print(f"runs in {work}")


if __name__ == "__main__":
    main()
