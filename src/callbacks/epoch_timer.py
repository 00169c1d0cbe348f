"""Lightning callback: where each epoch's wall time goes (training steps, data wait, validation, checkpoints).

`+callbacks.epoch_timer._target_=src.callbacks.epoch_timer.EpochTimer` logs `time/<part>_s` per
epoch; `scripts/bench_train.py --breakdown-epochs N` prints the default run's table from it.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any

import lightning as L

PARTS = ("train_steps", "data_wait", "validation", "checkpoints", "other")


@dataclass
class EpochTimes:
    """Seconds of one epoch, by part; `other` is what the parts leave of the epoch's wall time."""

    epoch: int
    wall: float = 0.0
    parts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PARTS, 0.0))

    def close(self) -> None:
        """Attribute the rest of the wall time to `other` (hooks, logging, the progress bar)."""
        measured = sum(v for k, v in self.parts.items() if k != "other")
        self.parts["other"] = max(0.0, self.wall - measured)


class EpochTimer(L.Callback):
    """Times the parts of every training epoch (validation and checkpoints inside it included)."""

    def __init__(self) -> None:
        self.epochs: list[EpochTimes] = []
        self._epoch_start = self._mark = self._val_start = self._val_checkpoints = 0.0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Wrap `trainer.save_checkpoint`, which every checkpoint callback calls, to time it."""
        save = trainer.save_checkpoint

        @functools.wraps(save)
        def timed_save(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return save(*args, **kwargs)
            finally:
                if self.epochs:
                    self.epochs[-1].parts["checkpoints"] += time.perf_counter() - start

        trainer.save_checkpoint = timed_save

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Open this epoch's record."""
        self.epochs.append(EpochTimes(trainer.current_epoch))
        self._epoch_start = self._mark = time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """Since the last step ended: waiting for the batch (loading, transfer, normalising)."""
        now = time.perf_counter()
        self.epochs[-1].parts["data_wait"] += now - self._mark
        self._mark = now

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """Forward, loss, backward and the optimiser step."""
        now = time.perf_counter()
        self.epochs[-1].parts["train_steps"] += now - self._mark
        self._mark = now

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Validation begins (inside the training epoch, after its last step)."""
        self._val_start = time.perf_counter()
        self._val_checkpoints = self.epochs[-1].parts["checkpoints"] if self.epochs else 0.0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Validation, its metrics and image logging, less the checkpoints saved meanwhile (timed apart)."""
        if trainer.sanity_checking or not self.epochs:
            return
        parts = self.epochs[-1].parts
        saved = parts["checkpoints"] - self._val_checkpoints
        parts["validation"] += time.perf_counter() - self._val_start - saved

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Close the epoch and log its parts."""
        record = self.epochs[-1]
        record.wall = time.perf_counter() - self._epoch_start
        record.close()
        pl_module.log_dict({f"time/{k}_s": v for k, v in record.parts.items()}, on_epoch=True)
