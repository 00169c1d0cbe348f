"""Lightning callbacks of seglab's own: the run's metrics.json (with provenance), fault injection."""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.plugins import TorchSyncBatchNorm
from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
# Test-only fault injection (tests/test_ddp_sweep.py): the process of this global rank raises
# during training; with FAULT_JOB_ENV set, only in that Hydra job (hydra.job.num) of a sweep.
FAULT_RANK_ENV = "SEGLAB_FAULT_INJECT_CRASH_RANK"
FAULT_JOB_ENV = "SEGLAB_FAULT_INJECT_CRASH_JOB"


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    return value


@functools.cache
def git_revision(root: Path = REPO_ROOT) -> dict[str, Any]:
    """The code's git commit and whether tracked files differ from it; "unknown"/None outside a checkout."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": "unknown", "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON via a temp file and rename, so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class MetricsFile(L.Callback):
    """Keeps the best and final validation metrics and writes them to `metrics.json` (rank 0 only)."""

    def __init__(self, path: str, monitor: str = "val/mIoU") -> None:
        self.path = Path(path)
        self.monitor = monitor
        self.best: dict[str, Any] = {}
        self.final: dict[str, Any] = {}
        self.started = time.monotonic()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the wall clock (the fit's, so a resumed run reports its own time)."""
        self.started = time.monotonic()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Record this epoch's val metrics; keep them as `best` when the monitored one improved."""
        # on_validation_end, not ..._epoch_end: callbacks' epoch-end hooks run before the module logs.
        if trainer.sanity_checking:
            return
        metrics = {
            k: _plain(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
        }
        if self.monitor not in metrics:
            return
        metrics.update(epoch=trainer.current_epoch, step=trainer.global_step)
        self.final = metrics
        best = self.best.get(self.monitor)
        if best is None or (metrics[self.monitor] is not None and metrics[self.monitor] > best):
            self.best = dict(metrics)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write metrics.json once, from rank 0."""
        if trainer.is_global_zero:
            write_json_atomic(self.path, self.summary(trainer))

    def summary(self, trainer: L.Trainer) -> dict[str, Any]:
        """The content of metrics.json: the metrics and what produced them (so every job of a sweep says what it ran)."""
        seed = os.environ.get("PL_GLOBAL_SEED")  # set by L.seed_everything: the seed really used
        return {
            "best": self.best,
            "final": self.final,
            "monitor": self.monitor,
            "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes,
            "precision": str(trainer.precision),
            "global_step": trainer.global_step,
            "seed": int(seed) if seed is not None else None,
            "git": git_revision(),
            "wall_time_s": round(time.monotonic() - self.started, 3),
        }

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints so a resumed run keeps its best."""
        return {"best": self.best, "final": self.final}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore best/final from a checkpoint."""
        self.best = dict(state_dict.get("best", {}))
        self.final = dict(state_dict.get("final", {}))


class AutoSyncBatchNorm(L.Callback):
    """SyncBatchNorm for a fit under multi-GPU DDP (`trainer.sync_batchnorm: true`), BatchNorm otherwise.

    torch's SyncBatchNorm has no CPU kernel, so Lightning's own `sync_batchnorm=True` fails under
    gloo; the choice needs the world size and the device, which only the running trainer knows.
    """

    def __init__(self) -> None:
        self.active = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Convert BatchNorm layers before the strategy wraps the model in DDP (as Lightning's own plugin does)."""
        self.active = (
            stage == "fit"
            and trainer.world_size > 1
            and trainer.strategy.root_device.type == "cuda"
        )
        if self.active:
            TorchSyncBatchNorm().apply(pl_module)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Back to plain BatchNorm, so the module runs on one device again (e.g. on a CPU)."""
        if self.active:
            TorchSyncBatchNorm().revert(pl_module)
            self.active = False


class CrashOnRank(L.Callback):
    """Fault injection for tests: raise in one process at a given training batch (a crashed DDP rank)."""

    def __init__(self, rank: int, batch_idx: int = 1) -> None:
        self.rank = rank
        self.batch_idx = batch_idx

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Raise on the chosen rank, after the first step so the other ranks are mid-collective."""
        if trainer.global_rank == self.rank and batch_idx == self.batch_idx:
            raise RuntimeError(
                f"seglab fault injection: {FAULT_RANK_ENV}={self.rank} crashed rank {self.rank}"
            )


def _job_num() -> int:
    return OmegaConf.select(HydraConfig.get(), "job.num", default=0)


def fault_injection_callbacks() -> list[L.Callback]:
    """`CrashOnRank` when the test-only environment variables ask for it (and this is the chosen job)."""
    rank = os.environ.get(FAULT_RANK_ENV)
    if rank is None:
        return []
    job = os.environ.get(FAULT_JOB_ENV)
    if job is not None and HydraConfig.initialized() and job != str(_job_num()):
        return []
    return [CrashOnRank(int(rank))]
