"""Test-only fault injection, added to a run from the command line (never part of seglab's configs)."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf


def _job_num() -> int:
    """This Hydra job's number in a sweep (0 in a single run)."""
    if not HydraConfig.initialized():
        return 0
    return int(OmegaConf.select(HydraConfig.get(), "job.num", default=0) or 0)


class FaultInjection(L.Callback):
    """Test hook: a fault once `trainer.global_step` reaches `at_step`, to check the guards above.

    `kind=nan_loss` fills the input of the batch trained at that step with NaN (the loss becomes
    non-finite there); `kind=sigterm` sends this process SIGTERM right after that step, as a
    scheduler pre-empting the job would; `kind=slurm_usr1` (in a SLURM job's first run) asks SLURM
    to send the job USR1 there (`scancel --signal=USR1`) and waits until Lightning has written its
    requeue checkpoint, so the job is pre-empted exactly at that step. Add it from the command line:
    `+callbacks.fault._target_=tests.helpers.faults.FaultInjection +callbacks.fault.kind=nan_loss
    +callbacks.fault.at_step=4` (`+callbacks.fault.job=1`: only in job 1 of a sweep).
    """

    KINDS = ("nan_loss", "sigterm", "slurm_usr1")
    SIGNAL_TIMEOUT_S = 60.0

    def __init__(self, kind: str, at_step: int, job: int | None = None) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"FaultInjection kind={kind!r}; expected one of {self.KINDS}")
        self.kind = kind
        self.at_step = int(at_step)
        self.fired = job is not None and int(job) != _job_num()  # with `job`, only in that sweep job

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """`nan_loss`: poison this batch's images if it is trained at `at_step`."""
        if self.kind == "nan_loss" and not self.fired and trainer.global_step == self.at_step:
            self.fired = True
            batch["image"].fill_(math.nan)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """`sigterm` / `slurm_usr1`: signal this process (this SLURM job) once `at_step` steps are done."""
        if self.fired or trainer.global_step != self.at_step:
            return
        if self.kind == "sigterm":
            self.fired = True
            os.kill(os.getpid(), signal.SIGTERM)
        elif self.kind == "slurm_usr1" and os.environ.get("SLURM_RESTART_COUNT", "0") in ("", "0"):
            self.fired = True
            self._preempt_slurm_job(Path(trainer.default_root_dir), trainer.is_global_zero)

    def _preempt_slurm_job(self, run_dir: Path, is_global_zero: bool) -> None:
        """USR1 to every task of this job through SLURM; return once Lightning's handler has saved."""
        if is_global_zero:
            subprocess.run(["scancel", "--signal=USR1", os.environ["SLURM_JOB_ID"]], check=True)
        deadline = time.monotonic() + self.SIGNAL_TIMEOUT_S
        while not list(run_dir.glob("hpc_ckpt_*.ckpt")):  # the handler runs in this (main) thread
            if time.monotonic() > deadline:
                raise RuntimeError(f"no USR1 from SLURM within {self.SIGNAL_TIMEOUT_S:.0f} s")
            time.sleep(0.1)


class CrashOnRank(L.Callback):
    """Raise in one process at a given training batch (a crashed DDP rank); with `job`, only in that sweep job.

    `+callbacks.crash._target_=tests.helpers.faults.CrashOnRank +callbacks.crash.rank=1
    [+callbacks.crash.job=1]`: DDP children get the same overrides, so the callback is in every
    process and fires in the one of that global rank (and Hydra job number).
    """

    def __init__(self, rank: int, batch_idx: int = 1, job: int | None = None) -> None:
        self.rank = int(rank)
        self.batch_idx = int(batch_idx)
        self.job = job

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Raise on the chosen rank, after the first step so the other ranks are mid-collective."""
        if self.job is not None and int(self.job) != _job_num():
            return
        if trainer.global_rank == self.rank and batch_idx == self.batch_idx:
            raise RuntimeError(f"seglab fault injection: crashed rank {self.rank}")


class FillDiskAfterTraining(L.Callback):
    """Fill the filesystem holding `path` once training ends, before metrics.json is written.

    `+callbacks.fill._target_=tests.helpers.faults.FillDiskAfterTraining +callbacks.fill.path=<run dir>`:
    the checkpoints are all saved by then; the file `path/filler` takes every byte left.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write until the filesystem refuses even a page."""
        with open(self.path / "filler", "wb", buffering=0) as filler:
            for chunk in (1 << 20, 1 << 12):
                with contextlib.suppress(OSError):
                    while True:
                        filler.write(b"\0" * chunk)


class DenyWritesAfterTraining(L.Callback):
    """Make the folder `path` refuse new files once training ends (root included: `chattr +i`)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Root ignores permission bits, not the immutable attribute; anyone else gets a read-only folder."""
        if os.geteuid() == 0:
            subprocess.run(["chattr", "+i", str(self.path)], check=True)
        else:
            self.path.chmod(0o555)
