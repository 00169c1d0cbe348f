"""Lightning callback: the run's metrics.json, best and final validation metrics with their provenance."""

from __future__ import annotations

import functools
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from src.utils.errors import UserError
from src.utils.files import write_json_atomic
from src.utils.next_steps import SRC_DIR, newest_checkpoint, shell_path

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def unwritten_metrics(path: Path, err: OSError, newest: Path | None) -> str:
    """What to tell a user whose metrics.json could not be written: the file, why, and what is safe."""
    why = err.strerror or str(err)
    kept = (
        f"training finished and its checkpoints are intact (the newest: {shell_path(newest)}); "
        f"`python {shell_path(SRC_DIR / 'eval.py')} ckpt_path={shell_path(newest)}` recomputes the "
        "validation metrics"
        if newest is not None
        else "training finished but no checkpoint was saved"
    )
    return f"could not write {path}: {why} (errno {err.errno}); {kept}. Free space or fix the folder's permissions"


class MetricsFile(L.Callback):
    """Keeps the best and final validation metrics and writes them to `metrics.json` (rank 0 only)."""

    def __init__(self, path: str, monitor: str = "val/mIoU") -> None:
        self.path = Path(path)
        self.monitor = monitor
        self.best: dict[str, Any] = {}
        self.final: dict[str, Any] = {}
        self.started = time.monotonic()
        self.start_step: int | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the wall clock (the fit's, so a resumed run reports its own time)."""
        self.started = time.monotonic()
        self.start_step = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The global step training starts from (a resumed run's is restored by now, unlike at fit start)."""
        self.start_step = trainer.global_step

    def trained(self, trainer: L.Trainer) -> bool:
        """Whether this fit made an optimiser step (a fit with no batch or no step to go makes none)."""
        return self.start_step is not None and trainer.global_step > self.start_step

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
        """Write metrics.json once, from rank 0, if this fit trained (else the file stays as it was)."""
        if not (trainer.is_global_zero and self.trained(trainer)):
            return
        try:
            write_json_atomic(self.path, self.summary(trainer))
        except OSError as err:  # a full disk or a folder made read-only after training
            raise UserError(unwritten_metrics(self.path, err, newest_checkpoint(trainer))) from None

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
