"""What a user sees on the command line when they make a mistake: one clear message, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
