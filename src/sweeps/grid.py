"""A grid: every combination of the swept lists is one job, numbered as `-m` numbers them.

The expansion is Hydra's own (`BasicSweeper.split_arguments`), so job k here runs what job k of
`python src/train.py -m` with the same overrides runs. On a second run of the same command the
journal says which jobs are done: complete and failed ones are left alone, interrupted ones (and
those still running when their runner died) continue from their last checkpoint.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

from src.sweeps.command import SweepCommand
from src.sweeps.journal import (
    COMPLETE,
    FAILED,
    FINAL_STATES,
    INTERRUPTED,
    INTERRUPTED_CODES,
    RUNNING,
    JobHistory,
    JobJournal,
    ended_after,
)
from src.sweeps.scheduler import PlannedJob
from src.utils.errors import UserError

log = logging.getLogger(__name__)


def expand_grid(command: SweepCommand) -> list[list[str]]:
    """Each job's overrides: the product of the swept lists, in `-m`'s order (the last list varies fastest)."""
    (batch,) = BasicSweeper.split_arguments(command.overrides, max_batch_size=None)
    return [list(job) for job in batch]


def check_same_grid(jobs: list[list[str]], history: dict[str, JobHistory], sweep_dir: Path) -> None:
    """Refuse to continue a sweep dir whose recorded jobs are not this command's."""
    for name, job in history.items():
        number = int(name) if name.isdigit() else -1
        if not 0 <= number < len(jobs) or job.overrides != jobs[number]:
            expected = jobs[number] if 0 <= number < len(jobs) else "no such job"
            raise UserError(
                f"{sweep_dir} holds another sweep: its job {name} ran {job.overrides}, this command's "
                f"is {expected}. Choose another sweep.dir (or leave it out: each command gets its own)"
            )


class GridDriver:
    """Hands out the grid's jobs that are not done yet; re-queues a job a signal killed (`max_retry`)."""

    def __init__(self, command: SweepCommand, journal: JobJournal) -> None:
        self.jobs = expand_grid(command)
        self.history = journal.histories()
        check_same_grid(self.jobs, self.history, command.sweep_dir)
        self.max_retry = int(command.config.sweep.max_retry)
        self.queue: deque[PlannedJob] = deque()
        for number, overrides in enumerate(self.jobs):
            past = self.history.get(str(number))
            if past is not None and past.state == RUNNING and ended_after(command.sweep_dir / past.name, past):
                past.state = COMPLETE  # it finished while its runner was being killed
                journal.record("end", past.name, number=number, state=COMPLETE, exit_code=None)
            if past is None or past.state not in FINAL_STATES:
                self.queue.append(PlannedJob(number, str(number), overrides, resume=past is not None))
        done = len(self.jobs) - len(self.queue)
        log.info("grid of %d jobs: %d done before, %d to run", len(self.jobs), done, len(self.queue))

    def next_job(self) -> PlannedJob | None:
        """The next job of the grid that is not done."""
        return self.queue.popleft() if self.queue else None

    def finished(self, job: PlannedJob, exit_code: int, stopped: bool) -> str:
        """complete / failed, or interrupted (continued now if a signal killed it, else next run)."""
        if exit_code == 0:
            return COMPLETE
        if stopped:
            return INTERRUPTED
        if exit_code in INTERRUPTED_CODES:
            past = self.history.setdefault(job.name, JobHistory(job.name))
            past.job_faults += 1
            if past.job_faults <= self.max_retry:
                log.warning("job %s was killed (exit code %d): continuing it", job.name, exit_code)
                self.queue.appendleft(PlannedJob(job.number, job.name, job.overrides, resume=True))
                return INTERRUPTED
        return FAILED
