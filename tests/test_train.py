"""`debug=smoke` end to end: a real (tiny) training run writes what DESIGN.md promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.train import train


def scalar_tags(event_dir: Path) -> set[str]:
    """The scalar tags TensorBoard would show for a run dir."""
    acc = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_smoke_run_writes_checkpoints_events_and_metrics(smoke_cfg, tmp_path: Path) -> None:
    cfg = smoke_cfg()
    metrics = train(cfg)
    out = Path(cfg.paths.output_dir)

    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(name.startswith("best-") for name in ckpts)
    # only tensors and primitives: loads with weights_only=True
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["hyper_parameters"]["num_classes"] == 6
    assert any(k.startswith("model.") for k in state["state_dict"])

    tags = scalar_tags(out / "tensorboard")
    for tag in ("train/loss_step", "train/loss_epoch", "val/loss", "val/mIoU", "val/mAcc", "val/aAcc",
                "val/FWIoU", "val/mDice", "val/IoU/disc", "val/mIoU_best", "hp/val_mIoU_best", "train/loss_ce_step"):
        assert tag in tags, f"{tag} missing from {sorted(tags)}"

    summary = json.loads((out / "metrics.json").read_text())
    assert summary["best"]["val/mIoU"] == max(summary["best"]["val/mIoU"], summary["final"]["val/mIoU"])
    assert summary["final"]["epoch"] == 1
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    logged = [event.value for event in acc.Scalars("val/mIoU")]
    assert len(logged) == 2 and summary["best"]["val/mIoU"] == pytest.approx(max(logged))
    assert metrics["val/mIoU_best"] == summary["best"]["val/mIoU"]


def test_train_loss_decreases_on_a_tiny_run(smoke_cfg) -> None:
    cfg = smoke_cfg("trainer.max_epochs=4", "trainer.limit_train_batches=4", "callbacks.model_checkpoint=null",
                    "optim.lr=5e-3")
    out = Path(cfg.paths.output_dir)
    train(cfg)
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train/loss_epoch")]
    assert len(losses) == 4
    assert losses[-1] < losses[0]
