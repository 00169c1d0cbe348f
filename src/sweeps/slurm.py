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

import copy
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import submitit
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from src.sweeps.backends import JOB_OUTPUT, REPO_ROOT, Job, exit_code
from src.utils.errors import UserError

log = logging.getLogger(__name__)

SUBMITIT_DIR = ".submitit"
# What AutoExecutor calls by the same name on every cluster; the rest of hydra-submitit-launcher's
# SlurmQueueConf goes to SLURM with the `slurm_` prefix (as that launcher does).
GENERIC_KEYS = (
    "timeout_min",
    "mem_gb",
    "nodes",
    "cpus_per_task",
    "gpus_per_node",
    "tasks_per_node",
    "stderr_to_stdout",
)
# Launcher keys that are no sbatch option: the folder and job name are the backend's, max_num_timeout
# is submitit's own requeue (Lightning requeues here).
NOT_SBATCH = ("_target_", "submitit_folder", "name", "max_num_timeout")
# Overrides a job may carry that change its SLURM resources through slurm_ddp's interpolations.
RESOURCE_KEYS = ("trainer.devices", "trainer.num_nodes")
# SLURM states of a job that ended before train.py could return: reported like a killed process.
KILLED_STATES = (
    "CANCELLED",
    "PREEMPTED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "DEADLINE",
    "BOOT_FAIL",
)
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
        # train.py's checkpoint is written; a Python handler (not SIG_IGN) is reset in the child.
        signal.signal(signal.SIGUSR1, _ignore_signal)
        env = {**os.environ, **self.env}
        if os.environ.get("SLURM_PROCID", "0") != "0":
            return exit_code(
                subprocess.call(self.argv, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL)
            )
        with open(self.output, "ab") as output:
            return exit_code(
                subprocess.call(
                    self.argv,
                    cwd=self.cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            )


def _ignore_signal(signum: int, frame: Any) -> None:
    """A handler that does nothing: the worker lives on while train.py handles the signal."""


def launcher_config(config: DictConfig) -> dict[str, Any]:
    """The resolved `hydra.launcher` of a sweep's config, less what is no sbatch option; UserError unless SLURM's."""
    launcher = OmegaConf.select(config, "hydra.launcher")
    target = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
    if launcher is None or not target.endswith("SlurmLauncher"):
        raise UserError(
            f"sweep.backend=slurm takes its resources from a SLURM launcher config, but hydra.launcher is "
            f"{target or 'not set'}: add hydra/launcher=slurm_ddp (one DDP run of trainer.num_nodes x "
            "trainer.devices tasks per job) or hydra/launcher=submitit_slurm"
        )
    # key by key: submitit_folder's interpolations (Hydra's sweep dir) are never resolved
    return {key: _plain(launcher[key]) for key in launcher if key not in NOT_SBATCH}


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def executor_parameters(launcher: Mapping[str, Any]) -> dict[str, Any]:
    """submitit.AutoExecutor parameters from a resolved SLURM launcher config."""
    params = {key: value for key, value in launcher.items() if value is not None}
    delay = params.pop("signal_delay_s", 120)
    # Lightning's requeue signal; the user's own additional_parameters.signal still wins
    params["additional_parameters"] = {
        "signal": f"USR1@{delay}",
        **params.get("additional_parameters", {}),
    }
    return {key if key in GENERIC_KEYS else f"slurm_{key}": value for key, value in params.items()}


def check_tasks_match_devices(config: DictConfig, launcher: Mapping[str, Any]) -> None:
    """Lightning's SLURMEnvironment needs one task per device on each node: say so before submitting."""
    devices, num_nodes = config.trainer.get("devices"), config.trainer.get("num_nodes", 1)
    if not isinstance(devices, int) or not isinstance(num_nodes, int):
        return  # "auto" or a device list: Lightning checks the job's own variables
    asked = (launcher.get("nodes", 1), launcher.get("tasks_per_node", 1))
    if asked != (num_nodes, devices):
        raise UserError(
            f"hydra.launcher asks {asked[0]} node(s) x {asked[1]} task(s) but trainer.num_nodes={num_nodes} "
            f"x trainer.devices={devices}: Lightning needs one SLURM task per device "
            "(hydra/launcher=slurm_ddp sets both from the trainer)"
        )


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
            path.name: path for path in sweep_dir.glob(f"*/{SUBMITIT_DIR}/*") if path.name.isdigit()
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

    def job_parameters(self, job: Job) -> dict[str, Any]:
        """The executor parameters of one job: the launcher config with this job's trainer.devices / num_nodes."""
        config = self.config
        parsed = OverridesParser.create().parse_overrides(list(job.overrides))
        changes = {o.key_or_group: o.value() for o in parsed if o.key_or_group in RESOURCE_KEYS}
        if changes:
            config = copy.deepcopy(config)
            for key, value in changes.items():
                OmegaConf.update(config, key, value)
        launcher = launcher_config(config)
        check_tasks_match_devices(config, launcher)
        return {**executor_parameters(launcher), "name": f"{self.task_name}-{job.number}"}

    def submit(self, job: Job) -> submitit.Job:
        """sbatch the job; its handle is submitit's Job."""
        job.run_dir.mkdir(parents=True, exist_ok=True)
        executor = submitit.AutoExecutor(folder=job.run_dir / SUBMITIT_DIR / "%j", cluster="slurm")
        executor.update_parameters(**self.job_parameters(job))
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
