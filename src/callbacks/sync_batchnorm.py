"""Lightning callback: SyncBatchNorm for multi-GPU DDP fits, plain BatchNorm everywhere else."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.plugins import TorchSyncBatchNorm


class AutoSyncBatchNorm(L.Callback):
    """SyncBatchNorm for a fit under multi-GPU DDP, BatchNorm otherwise (`callbacks.sync_batchnorm=null`: off).

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
