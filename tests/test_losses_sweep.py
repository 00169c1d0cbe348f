"""The mission's loss sweep: `-m loss=focal_dice loss.focal.gamma=0,2 loss.class_weights=null,auto`."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import SMOKE_DATA
from tests.helpers.cli import run_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_focal_dice_sweep_makes_four_jobs(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    data_dir = tmp_path / "data"
    cmd = [
        sys.executable,
        "src/train.py",
        "-m",
        "debug=smoke", *SMOKE_DATA,
        "loss=focal_dice",
        "loss.focal.gamma=0,2",
        "loss.class_weights=null,auto",
        f"hydra.sweep.dir={sweep_dir}",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={tmp_path}/logs",
    ]
    result = run_script(cmd, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 4, [p.name for p in sweep_dir.iterdir()]
    seen = set()
    for job in jobs:
        assert "val/mIoU" in (job / "metrics.json").read_text(), job
        num_classes = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["data"][
            "num_classes"
        ]
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        gamma = next(o for o in overrides if o.startswith("loss.focal.gamma="))
        weights = next(o for o in overrides if o.startswith("loss.class_weights="))
        seen.add((gamma, weights))
    assert seen == {
        (f"loss.focal.gamma={g}", f"loss.class_weights={w}")
        for g in (0, 2)
        for w in ("null", "auto")
    }
    # the `auto` jobs computed median-frequency weights once and cached them beside the dataset
    caches = list(data_dir.rglob("class_weights-*-median_frequency.json"))
    assert len(caches) == 1
    assert len(json.loads(caches[0].read_text())["weights"]) == num_classes


MY_LOSS = '''
import torch.nn.functional as F
from torch import nn


class MyLoss(nn.Module):
    """A user's term: it names ignore_index, so the composite hands it the data's."""

    def __init__(self, ignore_index: int) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits, mask):
        return F.cross_entropy(logits, mask, ignore_index=self.ignore_index) ** 2
'''


@pytest.mark.slow
def test_a_users_own_term_trains_from_the_command_line(tmp_path: Path, data_dir: Path) -> None:
    """A user's own term on the command line: `loss=ce_dice '+loss.mine={_target_: mypkg.MyLoss, weight: 0.3}'`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text(MY_LOSS)
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "src/train.py", "debug=smoke", *SMOKE_DATA, "trainer.max_epochs=1",
        "loss=ce_dice", "+loss.mine={_target_: mypkg.MyLoss, weight: 0.3}",
        f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = run_script(cmd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss_mine_step", "train/loss_ce_step", "train/loss_dice_step"} <= tags
    parts = {name: events.Scalars(f"train/loss_{name}_step")[0].value for name in ("ce", "dice", "mine")}
    total = events.Scalars("train/loss_step")[0].value
    assert total == pytest.approx(parts["ce"] + parts["dice"] + 0.3 * parts["mine"], rel=1e-5)
    assert parts["mine"] == pytest.approx(parts["ce"] ** 2, rel=1e-5)  # the same CE, squared
