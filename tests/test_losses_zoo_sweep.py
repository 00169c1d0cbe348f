"""The loss zoo from the command line: `-m debug=smoke loss=tversky,lovasz,ohem,ce_lovasz`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import SMOKE_DATA

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


@pytest.mark.slow
def test_zoo_sweep_makes_a_job_per_loss(data_dir: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable, "src/train.py", "-m", "debug=smoke", *SMOKE_DATA,
        f"loss={','.join(TERMS)}",
        "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path}/logs", f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
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
