"""Where a sweep's jobs run: the `Backend` interface, and `LocalBackend` (one process per job here).

The runner hands a backend one `Job` at a time and polls it; a backend knows nothing of grids,
studies or slots. `sweep.backend=slurm` selects `src.sweeps.slurm.SlurmBackend`, which submits the
same jobs to SLURM (devices then come from SLURM, not from the runner).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from src.sweeps.warm import end_with_parent, forkserver, run_as_main

REPO_ROOT = Path(__file__).resolve().parents[2]
# A job's console output (Hydra's <task>.log holds its log records; this holds everything else).
JOB_OUTPUT = "sweep_job.out"


@dataclass
class Job:
    """One run of the sweep's script, as the runner planned it."""

    number: int  # job / trial number in the sweep
    overrides: list[str]  # src/train.py overrides for this job, hydra.run.dir=<run_dir> included
    run_dir: Path
    env: dict[str, str] = field(default_factory=dict)  # added to the environment
    slot: int = 0


class Backend(Protocol):
    """Starts, watches and stops jobs."""

    def submit(self, job: Job) -> Any:
        """Start the job; return a handle for `poll` and `cancel`."""

    def poll(self, handle: Any) -> int | None:
        """The job's exit code once it has finished (128 + N when signal N ended it); None while it runs."""

    def cancel(self, handle: Any) -> None:
        """SIGTERM the job (it writes its last checkpoint) and wait for it to end."""


def exit_code(returncode: int) -> int:
    """Popen's returncode as a shell reports it: a process killed by signal N exited 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def kill_group(pgid: int) -> None:
    """SIGKILL whatever is left of a job's process group (DDP children that outlived their job)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class WarmJob:
    """A job forked from the preloaded server (src/sweeps/warm.py), with Popen's poll/send_signal/wait."""

    def __init__(self, process: Any) -> None:
        self.process = process
        self.pid = process.pid

    def poll(self) -> int | None:
        """Popen's returncode: None while running, -N when signal N ended it."""
        return self.process.exitcode

    def send_signal(self, signum: int) -> None:
        """Signal the job's main process."""
        os.kill(self.pid, signum)

    def wait(self) -> int:
        """Wait for the job to end; its returncode."""
        self.process.join()
        return self.process.exitcode


class LocalBackend:
    """Each job is `python <script> <overrides>` in its own session (process group) on this machine.

    Its output goes to `<run_dir>/sweep_job.out`. With `warm_start`, a job that gets no GPU is forked
    from a server that has already imported torch and Lightning (src/sweeps/warm.py says why); the
    others start a fresh interpreter. Jobs must be submitted from the runner's main thread: the
    kernel's parent-death signal fires when the thread that started the job ends.
    """

    def __init__(
        self,
        script: str | os.PathLike[str] = "src/train.py",
        stop_grace_s: float = 120.0,
        python: str = sys.executable,
        cwd: str | os.PathLike[str] = REPO_ROOT,
        warm_start: bool = True,
    ) -> None:
        self.cwd = Path(cwd)
        self.script = str(Path(self.cwd, script))
        self.stop_grace_s = stop_grace_s
        self.python = python
        self.warm = forkserver() if warm_start else None

    def submit(self, job: Job) -> subprocess.Popen | WarmJob:
        """Start the job's process; its group id is its pid."""
        job.run_dir.mkdir(parents=True, exist_ok=True)
        if self.warm is not None and "CUDA_VISIBLE_DEVICES" not in job.env:
            with contextlib.suppress(OSError):  # no forkserver here (a socket path too long): a fresh one
                return self._fork(job)
        with (job.run_dir / JOB_OUTPUT).open("ab") as output:
            return subprocess.Popen(
                [self.python, self.script, *job.overrides],
                cwd=self.cwd,
                env={**os.environ, **job.env},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the terminal's Ctrl-C reaches the runner, which stops jobs cleanly
                preexec_fn=end_with_parent,
            )

    def _fork(self, job: Job) -> WarmJob:
        """Fork the job from the preloaded server, in a session of its own."""
        argv = [self.script, *job.overrides]
        environment = {**os.environ, **job.env}
        process = self.warm.Process(
            target=run_as_main,
            args=(argv, str(self.cwd), environment, str(job.run_dir / JOB_OUTPUT)),
            kwargs={"runner": os.getpid()},
        )
        process.start()
        return WarmJob(process)

    def poll(self, handle: subprocess.Popen | WarmJob) -> int | None:
        """The exit code once the job's main process has ended (its leftover children are killed)."""
        returncode = handle.poll()
        if returncode is None:
            return None
        kill_group(handle.pid)
        return exit_code(returncode)

    def cancel(self, handle: subprocess.Popen | WarmJob) -> None:
        """SIGTERM the job's main process (seglab's train.py forwards it to its DDP children, saves
        `last.ckpt` and exits 143); after `stop_grace_s` the whole group is killed."""
        if handle.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                handle.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.stop_grace_s
            while handle.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        kill_group(handle.pid)
        handle.wait()


def make_backend(config: Any) -> Backend:
    """The backend `sweep.backend` names, built from the sweep's composed config (`sweep.*`, `hydra.*`, ...).

    `local`: `LocalBackend(sweep.script, sweep.stop_grace_s)`. `slurm`: `src.sweeps.slurm.SlurmBackend(config)`,
    which reads its resources from the same config; the runner then assigns no devices itself.
    """
    name = str(config.sweep.backend)
    if name == "local":
        return LocalBackend(
            str(config.sweep.script),
            stop_grace_s=float(config.sweep.stop_grace_s),
            warm_start=bool(config.sweep.warm_start),
        )
    if name == "slurm":
        from src.sweeps.slurm import SlurmBackend

        return SlurmBackend(config)
    from src.utils.errors import UserError

    raise UserError(f"sweep.backend={name!r} is not a backend: expected local or slurm")
