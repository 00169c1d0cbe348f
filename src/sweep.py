"""Run a sweep in parallel slots: the jobs of a grid, or the trials of an Optuna search.

python src/sweep.py [the overrides of `python src/train.py -m`] [sweep.slots=N] ...

Each job is an ordinary `python src/train.py` run in its own process and dir (`<sweep dir>/<n>`).
Running the same command again continues the sweep. docs/sweeps.md describes every option.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

# `python src/sweep.py` puts src/ on sys.path, not the repository root that holds the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from src.sweeps.backends import make_backend  # noqa: E402
from src.sweeps.command import SweepCommand, check_values_compose, parse_command  # noqa: E402
from src.sweeps.journal import FAILED, JobJournal, sweep_lock, wait_for_orphans  # noqa: E402
from src.sweeps.resources import SlotResources, plan_slots  # noqa: E402
from src.sweeps.scheduler import Scheduler  # noqa: E402
from src.sweeps.summary import MANIFEST, summarize  # noqa: E402
from src.utils.errors import exit_on_user_error  # noqa: E402
from src.utils.files import write_json_atomic  # noqa: E402

log = logging.getLogger("sweep")


def make_driver(command: SweepCommand, journal: JobJournal):
    """The grid driver, or the Optuna driver for `sweep=optuna`."""
    if not command.search:
        from src.sweeps.grid import GridDriver

        return GridDriver(command, journal)
    from src.sweeps.search import OptunaDriver  # parse_command checked that Optuna is installed

    return OptunaDriver(command)


def slot_plan(command: SweepCommand) -> list[SlotResources]:
    """Devices or threads per slot for local jobs; under another backend, only the slot count."""
    if command.config.sweep.backend == "local":
        return plan_slots(command.config)
    return [SlotResources(slot, [], None) for slot in range(int(command.config.sweep.slots))]


def write_manifest(command: SweepCommand, driver: object) -> None:
    """`sweep.json`: what the sweep runs and where its study lives (for the summary and for people)."""
    sweep = command.config.sweep
    manifest = {
        "driver": str(sweep.driver),
        "argv": command.argv,
        "slots": int(sweep.slots),
        "backend": str(sweep.backend),
        "params": [p.override.input_line for p in command.params],
    }
    if command.search:
        manifest.update(
            study_name=str(sweep.study_name),
            storage=driver.storage,
            metric=str(sweep.metric),
            direction=str(sweep.direction),
            n_trials=driver.n_trials,
        )
    write_json_atomic(command.sweep_dir / MANIFEST, manifest)


def run(argv: list[str]) -> int:
    """Run the sweep; its exit status: 0, 1 when a job failed, 128 + N when signal N stopped it."""
    command = parse_command(argv)
    check_values_compose(command)
    sweep_dir = command.sweep_dir
    log.info("sweep dir: %s", sweep_dir)
    with sweep_lock(sweep_dir):
        journal = JobJournal(sweep_dir)
        wait_for_orphans(sweep_dir, journal, grace_s=float(command.config.sweep.stop_grace_s))
        driver = make_driver(command, journal)
        slots = slot_plan(command)
        write_manifest(command, driver)
        scheduler = Scheduler(
            driver, make_backend(command.config), sweep_dir, slots, journal,
            assign_devices=command.config.sweep.backend == "local",
        )  # fmt: skip
        stopped_by = scheduler.run()
    if stopped_by is not None:
        log.warning("stopped; run the same command again to continue (%s)", sweep_dir)
        return stopped_by
    rows = summarize(sweep_dir)
    failed = [row.name for row in rows if row.state == FAILED]
    if failed:
        log.error("%d job(s) failed: %s (their sweep_job.out says why)", len(failed), ", ".join(failed))
        return 1
    return 0


def main() -> None:
    """Command line entry point."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    with exit_on_user_error():
        code = run(sys.argv[1:])
    sys.exit(code)


if __name__ == "__main__":
    main()
