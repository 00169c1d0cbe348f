"""Lightning callback: report each validation's metric to this run's Optuna trial; stop when pruned.

Inactive unless `src/sweep.py` started the run as a trial of a search (it passes the trial in the
environment, src/sweeps/trial.py). After every validation, rank 0 reports `monitor` (the epoch's
value) as the trial's intermediate value at that epoch and asks the study's pruner; the answer is
broadcast, so under DDP every rank stops together. A pruned run stops like a finished one: the
epoch's `last.ckpt` and `metrics.json` are written, the trial is told PRUNED, and the process exits 0.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L

from src.sweeps.trial import TrialLink, tell_pruned

log = logging.getLogger(__name__)


class TrialPruning(L.Callback):
    """Reports to the trial `SEGLAB_SWEEP_TRIAL` names and stops the run when its pruner says so."""

    def __init__(self) -> None:
        self.link = TrialLink.from_env()
        self.trial: Any = None
        self.pruned = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Rank 0 opens the trial in the study's storage."""
        self.pruned = False
        if self.link is not None and trainer.is_global_zero:
            self.trial = self.link.open()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Report this epoch's value; on a prune, every rank stops after this validation."""
        if self.link is None or trainer.sanity_checking:
            return
        prune = self._report(trainer) if trainer.is_global_zero else False
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned = True
            trainer.should_stop = True

    def _report(self, trainer: L.Trainer) -> bool:
        value = trainer.callback_metrics.get(self.link.monitor)
        if value is None:
            log.warning("%s was not logged: nothing reported to trial %d", self.link.monitor, self.link.number)
            return False
        epoch = trainer.current_epoch
        self.trial.report(float(value), step=epoch)
        prune = self.trial.should_prune()
        if prune:
            shown = float(value)
            log.info(
                "trial %d pruned at epoch %d (%s = %s): stopping after this validation",
                self.link.number, epoch, self.link.monitor, f"{shown:.4f}" if math.isfinite(shown) else shown,
            )  # fmt: skip
        return prune

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Tell the study the trial was pruned, once the run has written its files."""
        if self.pruned and self.trial is not None:
            tell_pruned(self.trial)
