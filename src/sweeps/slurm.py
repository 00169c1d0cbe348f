"""`sweep.backend=slurm`: every job of a sweep is one SLURM job, submitted through submitit.

The runner still decides which job runs next (grid, Optuna, slots); SLURM decides where. A job is the
same `python src/train.py <overrides>` as on the local backend, started by `srun` once per task:
`nodes` x `tasks_per_node` tasks as the `hydra/launcher` config asks (`slurm_ddp`: `trainer.num_nodes`
nodes with `trainer.devices` tasks and GPUs each), so Lightning's SLURMEnvironment finds every rank in
the SLURM_* variables and starts no process of its own. Resources are resolved per job, so a sweep
over `trainer.devices` asks each job's own task count.

Signals reach every process of a job step:
- USR1 (`scancel --signal=USR1 <job>`, or SLURM `signal_delay_s` before the time limit): Lightning
  writes `hpc_ckpt_<n>.ckpt` into the run dir and requeues the job, whose train.py then resumes from it
  (src/utils/run_guard.py). submitit asks SLURM for USR2, whose default action would kill train.py
  without a checkpoint, so the jobs ask for USR1 instead; submitit's worker ignores USR1 so that the
  task outlives the checkpoint.
- SIGTERM (`cancel`): train.py writes `last.ckpt` and exits 143; submitit's worker ignores SIGTERM.

A job has finished when SLURM says so: a requeued job's first run leaves a result behind. submitit
asks `sacct`, which needs SLURM's accounting (a cluster without it: docs/slurm.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import submitit
from omegaconf import DictConfig, OmegaConf

from src.sweeps.backends import JOB_OUTPUT, REPO_ROOT, Job, exit_code
from src.sweeps.slurm_resources import check_tasks_match_devices, job_parameters, launcher_config
from src.utils.errors import UserError

log = logging.getLogger(__name__)

SUBMITIT_DIR = ".submitit"
# SLURM states of a job that ended before train.py could return: reported like a killed process.
KILLED_STATES = ("CANCELLED", "PREEMPTED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "DEADLINE", "BOOT_FAIL")  # fmt: skip
KILLED_EXIT_CODE = 128 + int(signal.SIGKILL)
# A result younger than this asks SLURM at once (throttled) whether its job is over; older ones (a
# requeued job's first run) wait for submitit's own polling, which backs off up to minutes.
FRESH_RESULT_S = 120.0
FORCED_POLL_INTERVAL_S = 2.0


class TrainCommand:
    """What each task of a SLURM job runs (pickled by submitit): the job's command; returns its exit code."""

    def __init__(self, argv: list[str], cwd: str, env: dict[str, str], output: str) -> None:
        self.argv = argv
        self.cwd = cwd
        self.env = env
        self.output = output  # rank 0's console output; the other ranks' go to submitit's task logs

    def __call__(self) -> int:
        """Run the command to its end in this task; 128 + N when signal N ended it."""
        # USR1's default action would end this worker, and SLURM then kills the whole task before
        # train.py's checkpoint is written. A Python handler, unlike SIG_IGN, is not inherited by it.
        signal.signal(signal.SIGUSR1, _ignore_signal)
        rank_0 = os.environ.get("SLURM_PROCID", "0") == "0"
        with open(self.output, "ab") if rank_0 else contextlib.nullcontext() as output:
            returncode = subprocess.call(
                self.argv,
                cwd=self.cwd,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT if rank_0 else None,
            )
        return exit_code(returncode)


def _ignore_signal(signum: int, frame: Any) -> None:
    """A handler that does nothing: the worker lives on while train.py handles the signal."""


class SlurmBackend:
    """Submits each job to SLURM through submitit, polls it, and stops it with SIGTERM (see the module docstring).

    submitit's files (the sbatch script, pickles, each task's log) go to `<run dir>/.submitit/<job id>`
    beside the run they belong to; rank 0's console output to the job's `sweep_job.out`, as with the
    local backend.
    """

    def __init__(self, config: DictConfig) -> None:
        self.config = config
        self.script = str(REPO_ROOT / str(config.sweep.script))
        self.stop_grace_s = float(config.sweep.stop_grace_s)
        self.task_name = str(OmegaConf.select(config, "task_name", default="train"))
        check_slurm_commands()
        check_tasks_match_devices(config, launcher_config(config))
        self._last_forced_poll = float("-inf")
        self.end_orphaned_jobs(Path(str(config.sweep.dir)))

    def end_orphaned_jobs(self, sweep_dir: Path) -> None:
        """Stop the SLURM jobs of this sweep that a runner killed outright left queued or running.

        Like the local backend's orphans (which the kernel sends SIGTERM), they get SIGTERM and
        `sweep.stop_grace_s` to write `last.ckpt`, before this runner plans its jobs: it then
        resumes them. Only one runner holds a sweep dir at a time, so no live runner's job is hit.
        """
        submitted = {
            path.name for path in sweep_dir.glob(f"*/{SUBMITIT_DIR}/*") if path.name.isdigit()
        }
        orphans = [job_id for job_id in queued_job_ids() if job_id in submitted]
        if not orphans:
            return
        log.warning(
            "stopping SLURM job(s) %s left by an earlier run of this sweep", ", ".join(orphans)
        )
        for job_id in orphans:
            stop_job(job_id, queue_state(job_id))
        deadline = time.monotonic() + self.stop_grace_s
        while set(orphans) & set(queued_job_ids()) and time.monotonic() < deadline:
            time.sleep(1.0)
        for job_id in set(orphans) & set(queued_job_ids()):
            run_scancel(job_id)

    def submit(self, job: Job) -> submitit.Job:
        """sbatch the job; its handle is submitit's Job."""
        job.run_dir.mkdir(parents=True, exist_ok=True)
        executor = submitit.AutoExecutor(folder=job.run_dir / SUBMITIT_DIR / "%j", cluster="slurm")
        executor.update_parameters(
            **job_parameters(self.config, job.overrides), name=f"{self.task_name}-{job.number}"
        )
        command = TrainCommand(
            [sys.executable, self.script, *job.overrides],
            str(REPO_ROOT),
            dict(job.env),
            str(job.run_dir / JOB_OUTPUT),
        )
        return executor.submit(command)

    def poll(self, handle: submitit.Job) -> int | None:
        """train.py's exit code once SLURM says the job is over; 137 if SLURM ended it first; None before."""
        result = self._result_file(handle)
        written = result.exists()
        fresh = written and time.time() - result.stat().st_mtime < FRESH_RESULT_S
        state = handle.watcher.get_state(
            handle.job_id, mode="force" if fresh and self._may_force() else "standard"
        )
        if not handle.watcher.is_done(handle.job_id, mode="cache"):
            return None
        if not result.exists():
            return KILLED_EXIT_CODE if state.split()[0].upper() in KILLED_STATES else 1
        outcome, value = submitit.core.utils.pickle_load(result)
        return int(value) if outcome == "success" else 1

    def cancel(self, handle: submitit.Job) -> None:
        """SIGTERM a running job's tasks (train.py writes last.ckpt); scancel a pending one; wait for the end.

        A job still running after `sweep.stop_grace_s` is cancelled (SLURM kills it after its KillWait).
        """
        stop_job(handle.job_id, queue_state(handle.job_id))
        if not self._wait_until_over(handle, self.stop_grace_s):
            run_scancel(handle.job_id)
            self._wait_until_over(handle, self.stop_grace_s)

    def _wait_until_over(self, handle: submitit.Job, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            handle.watcher.update()  # one sacct call for every job of this process
            if handle.watcher.is_done(handle.job_id, mode="cache"):
                return True
            time.sleep(1.0)
        return False

    def _may_force(self) -> bool:
        now = time.monotonic()
        if now - self._last_forced_poll < FORCED_POLL_INTERVAL_S:
            return False
        self._last_forced_poll = now
        return True

    @staticmethod
    def _result_file(handle: submitit.Job) -> Path:
        """The result of the job's task 0 (every task writes one; rank 0's is train.py's outcome)."""
        return handle.paths.result_pickle


def check_slurm_commands() -> None:
    """SLURM's commands are here and sacct answers (submitit reads job states from it), else UserError."""
    missing = [
        name
        for name in ("sbatch", "srun", "squeue", "scancel", "sacct")
        if shutil.which(name) is None
    ]
    if missing:
        raise UserError(
            f"sweep.backend=slurm needs SLURM's commands, and {', '.join(missing)} is not on PATH: run the "
            "sweep where jobs are submitted from (a login node), or start scripts/local_slurm.py"
        )
    probe = _run(["sacct", "--noheader", "--parsable2", "--format=JobID", "--jobs=1"])
    if probe.returncode != 0:
        raise UserError(
            f"sacct fails here ({probe.stderr.strip() or probe.returncode}); submitit reads job states "
            "from it. A cluster without accounting needs a job completion log (docs/slurm.md)"
        )


def queue_state(job_id: str) -> str:
    """The job's state in SLURM's queue (PENDING, RUNNING, ...); '' once it has left it."""
    result = _run(["squeue", "--noheader", f"--jobs={job_id}", "--format=%T"])
    return result.stdout.strip() if result.returncode == 0 else ""


def queued_job_ids() -> list[str]:
    """The ids of this user's jobs in SLURM's queue (pending, running, completing)."""
    return _run(["squeue", "--me", "--noheader", "--format=%i"]).stdout.split()


def stop_job(job_id: str, state: str) -> None:
    """SIGTERM a running job's tasks (its train.py writes last.ckpt and exits); scancel a pending one."""
    if state == "RUNNING":
        run_scancel("--signal=TERM", job_id)  # the job steps only: the batch shell would die of it
    elif state:
        run_scancel(job_id)


def run_scancel(*args: str) -> None:
    """scancel, its failure ignored: the job may have ended in the meantime."""
    _run(["scancel", *args])


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
