"""What a user sees on the command line when they make a mistake: one clear message, no traceback."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import SMOKE_DATA
from tests.helpers.cli import run_script
from tests.helpers.toy_data import write_voc

ROOT = Path(__file__).resolve().parents[1]


def run_train(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return run_script([sys.executable, "src/train.py", f"paths.log_dir={tmp_path}/logs", *args])


def test_missing_voc_root_names_path_and_layout(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_dir"
    result = run_train("data=voc2012", f"data.root={missing}", tmp_path=tmp_path)
    assert result.returncode != 0
    assert str(missing) in result.stderr
    assert "VOCdevkit/VOC2012" in result.stderr and "SegmentationClass" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "M parameters" not in result.stdout + result.stderr  # failed before any model was built


def test_wrong_voc_root_names_path(tmp_path: Path) -> None:
    (tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages").mkdir(parents=True)
    result = run_train("data=voc2012", f"data.root={tmp_path}", tmp_path=tmp_path)
    assert result.returncode != 0
    assert f"data.root={tmp_path} does not hold a Pascal VOC 2012 dataset" in result.stderr
    assert "Traceback" not in result.stderr


def test_misspelt_override_names_the_key(tmp_path: Path) -> None:
    result = run_train("trainer.max_epoch=3", tmp_path=tmp_path)
    assert result.returncode != 0
    assert "max_epoch" in result.stderr and "not in struct" in result.stderr


def test_missing_weights_file_is_called_missing_whatever_the_width(tmp_path: Path) -> None:
    result = run_train("debug=smoke", "model.backbone.weights=/nonexistent.pth", tmp_path=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "model.backbone.weights=/nonexistent.pth: no such file" in result.stderr
    assert "full-width" not in result.stderr  # width 0.0625: the file's absence comes first


@pytest.mark.slow
def test_debug_smoke_trains_a_few_steps_on_a_voc_folder(tmp_path: Path) -> None:
    """`debug=smoke` sizes the run, whatever `data=`: here real VOC-layout files."""
    write_voc(tmp_path / "voc", {"train": [f"2008_{i:06d}" for i in range(6)], "val": ["2009_000001", "2009_000002"]})
    run_dir = tmp_path / "run"
    result = run_train(
        "debug=smoke", "data=voc2012", f"data.root={tmp_path / 'voc'}", f"hydra.run.dir={run_dir}",
        "trainer.max_epochs=1", tmp_path=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["global_step"] == 1  # 6 images, batch 4, drop_last: one step
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert config["data"]["num_classes"] == 21 and "spec" not in config["data"]


USER_TERM = """\
import torch
from torch import nn


class MeanMaxProb(nn.Module):
    \"\"\"1 - the mean confidence: a term with no __init__ of its own.\"\"\"

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return 1 - logits.softmax(1).amax(1).mean()
"""


def test_a_users_term_without_init_trains_and_logs_its_value(data_dir: Path, tmp_path: Path) -> None:
    """The README's custom-term command, with the simplest term a user writes."""
    (tmp_path / "user_code").mkdir()
    (tmp_path / "user_code" / "mylosses.py").write_text(USER_TERM)
    run_dir = tmp_path / "run"
    result = run_script(
        [sys.executable, "src/train.py", "debug=smoke", "loss=ce_dice",
         "+loss.mine={_target_: mylosses.MeanMaxProb, weight: 0.3}", "logger=csv", "trainer.max_epochs=1",
         *SMOKE_DATA, f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}"],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "user_code")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with (run_dir / "csv" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    logged = [float(row["train/loss_mine_step"]) for row in rows if row.get("train/loss_mine_step")]
    assert len(logged) == 3  # one per training step of debug=smoke's epoch
    total = [float(row["train/loss_step"]) for row in rows if row.get("train/loss_step")]
    parts = [[float(row[f"train/loss_{t}_step"]) for t in ("ce", "dice", "mine")] for row in rows
             if row.get("train/loss_step")]  # fmt: skip
    for value, (ce, dice, mine) in zip(total, parts, strict=True):
        assert 0 < mine < 1 and value == pytest.approx(ce + dice + 0.3 * mine, rel=1e-5)
