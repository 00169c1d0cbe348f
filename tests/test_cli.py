"""What a user sees on the command line when they make a mistake: one clear message, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_train(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "src/train.py", f"paths.log_dir={tmp_path}/logs", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


def test_missing_voc_root_names_path_and_layout(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_dir"
    result = run_train("data=voc2012", f"data.root={missing}", tmp_path=tmp_path)
    assert result.returncode != 0
    assert str(missing) in result.stderr
    assert "VOCdevkit/VOC2012" in result.stderr and "SegmentationClass" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "FCN8s" not in result.stdout  # failed before any model was built


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
