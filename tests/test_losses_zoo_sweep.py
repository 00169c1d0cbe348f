"""The loss zoo end to end: data-derived class weights, and `-m debug=smoke loss=tversky,lovasz,ohem,ce_lovasz`."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.utils.build import build_datamodule, build_loss
from tests.conftest import SMOKE_DATA
from tests.helpers.cli import run_script

ROOT = Path(__file__).resolve().parents[1]
# each preset and the terms it logs as train/loss_<term>
TERMS = {
    "tversky": ["tversky"],
    "lovasz": ["lovasz"],
    "ohem": ["ohem"],
    "ce_lovasz": ["ce", "lovasz"],
}


def scalar_tags(event_dir: Path) -> set[str]:
    """The scalar tags TensorBoard would show for a run dir."""
    acc = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_data_derived_class_weights_reach_every_zoo_term(smoke_cfg) -> None:
    """`loss.class_weights=median_frequency` arrives at each term as the list the builder resolves."""
    for preset, terms in TERMS.items():
        cfg = smoke_cfg(f"loss={preset}", "loss.class_weights=median_frequency")
        loss = build_loss(cfg.loss, build_datamodule(cfg.data))
        weights = loss.class_weights
        assert weights is not None and weights.numel() == cfg.data.num_classes
        for term in terms:
            assert torch.equal(loss.terms[term].class_weights, weights), (preset, term)
        logits = torch.randn(2, cfg.data.num_classes, 8, 8, requires_grad=True)
        value = loss(logits, torch.randint(0, cfg.data.num_classes, (2, 8, 8)))
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


@pytest.mark.slow
def test_zoo_sweep_makes_a_job_per_loss(data_dir: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable, "src/train.py", "-m", "debug=smoke", *SMOKE_DATA,
        f"loss={','.join(TERMS)}",
        "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path}/logs", f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip
    result = run_script(command, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 4, [p.name for p in sweep_dir.iterdir()]
    seen = set()
    for job in jobs:
        best = json.loads((job / "metrics.json").read_text())["best"]["val/mIoU"]
        assert math.isfinite(best), job
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        loss = next(o for o in overrides if o.startswith("loss=")).removeprefix("loss=")
        tags = scalar_tags(job / "tensorboard")
        for term in TERMS[loss]:
            assert f"train/loss_{term}_step" in tags, (loss, sorted(tags))
        seen.add(loss)
    assert seen == set(TERMS)
