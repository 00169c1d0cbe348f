"""Lightning callbacks of seglab's own: the run's metrics.json."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    return value


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

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Record this epoch's val metrics; keep them as `best` when the monitored one improved."""
        # on_validation_end, not ..._epoch_end: callbacks' epoch-end hooks run before the module logs.
        if trainer.sanity_checking:
            return
        metrics = {k: _plain(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
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
        """The content of metrics.json."""
        return {
            "best": self.best,
            "final": self.final,
            "monitor": self.monitor,
            "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes,
            "precision": str(trainer.precision),
            "global_step": trainer.global_step,
        }

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints so a resumed run keeps its best."""
        return {"best": self.best, "final": self.final}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore best/final from a checkpoint."""
        self.best = dict(state_dict.get("best", {}))
        self.final = dict(state_dict.get("final", {}))
