"""scripts/check_dataset.py: passes on the synthetic set with its histogram; lists each planted fault."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers.cli import run_script
from tests.helpers.toy_data import write_folder

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_dataset.py"


def load_script():
    spec = importlib.util.spec_from_file_location("check_dataset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_passes_and_reports_an_exact_histogram(
    data_dir: Path, tmp_path: Path, capsys
) -> None:
    root = data_dir / "synthetic"  # the embedded dataset, shared with the other tests
    code = load_script().main(
        [
            "data=synthetic",
            f"data.root={root}",
            "--out",
            str(tmp_path),
            "--workers",
            "0",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "no faults found" in printed and "background" in printed and "cross" in printed

    report = json.loads((tmp_path / "check_dataset.json").read_text())
    voc = root / "VOCdevkit" / "VOC2012"
    for split in ("train", "val"):
        ids = (voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        masks = [np.array(Image.open(voc / "SegmentationClass" / f"{i}.png")) for i in ids]
        pixels = sum(np.bincount(m.ravel(), minlength=256)[:6] for m in masks)
        images = sum((np.bincount(m.ravel(), minlength=256)[:6] > 0).astype(int) for m in masks)
        assert report["splits"][split]["pixels"] == pixels.tolist()
        assert report["splits"][split]["images"] == images.tolist()
        assert report["splits"][split]["ignored"] == sum(int((m == 255).sum()) for m in masks)
        assert f"{pixels[1]:,}" in printed  # the table shows the counts
    with Image.open(tmp_path / "class_histogram.png") as chart:
        assert chart.width >= 300 and chart.height >= 300
        colours = {c for _, c in chart.getcolors(1 << 16)}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours  # one bar colour per split


def plant_faults(root: Path) -> dict[str, str]:
    """A folder dataset with one of each fault; returns {fault: text the report must contain}."""
    stems = [f"s{i}" for i in range(8)]
    write_folder(root, stems, splits={"train": stems[:6] + ["ghost"], "val": []})
    (root / "images" / "s0.png").write_bytes(b"not an image")
    (root / "masks" / "s1.png").write_bytes(b"not a mask")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "s2.png")
    bad = np.zeros((40, 48), np.uint8)
    bad[:3, :3] = 9
    Image.fromarray(bad).save(root / "masks" / "s3.png")
    (root / "masks" / "s4.png").unlink()
    return {
        "undecodable image": "cannot decode image",
        "undecodable mask": "cannot decode mask",
        "size mismatch": "but mask",
        "value out of range": "s3.png holds value 9 in 9 px",
        "missing mask": "no mask for image",
        "listed image missing": "no image named 'ghost'",
        "empty split": "lists no images (empty split)",
    }


def test_planted_faults_are_each_listed_and_the_exit_code_is_1(tmp_path: Path) -> None:
    expected = plant_faults(tmp_path / "folder")
    overrides = ["data=folder", f"data.root={tmp_path / 'folder'}", "--out", str(tmp_path / "out")]
    run = run_script([sys.executable, str(SCRIPT), *overrides])
    faults = [line for line in run.stdout.splitlines() if line.startswith("FAULT: ")]
    assert run.returncode == 1, run.stdout + run.stderr
    for fault, text in expected.items():
        assert any(text in line for line in faults), f"{fault} ({text!r}) not in {faults}"
    assert len(faults) == len(expected)
    assert f"{len(expected)} fault(s) found" in run.stdout
    assert (tmp_path / "out" / "class_histogram.png").is_file()
