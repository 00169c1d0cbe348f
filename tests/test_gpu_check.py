"""scripts/gpu_check.sh: the prepared GPU run, tried on the CPU with --dry-run, and its pieces."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.budgeted_report import BudgetedReport
from scripts.gpu_check import TRAIN_MODES, peak_tflops

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H200", 989.0),
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_peak_table_knows_the_usual_devices_and_no_others(name: str, tflops: float | None) -> None:
    assert peak_tflops(name) == tflops


def test_report_skips_past_the_budget_and_keeps_going_after_an_error(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    report = BudgetedReport(out, budget_s=60.0, sections=["train"], meta={})
    assert report.item("train", ("fp32", "bare"), lambda: {"images_per_s": 2.0}) == {
        "images_per_s": 2.0
    }
    assert report.item("train", ("fp32", "lightning"), lambda: 1 / 0) is None
    assert report.item("train", ("compile", "bare"), lambda: {}, extra_s=3600.0) is None

    saved = json.loads(out.read_text())
    assert saved["train"] == {"fp32": {"bare": {"images_per_s": 2.0}}}
    assert [entry["item"] for entry in saved["errors"]] == ["train fp32 / lightning"]
    assert "ZeroDivisionError" in saved["errors"][0]["why"]
    assert [entry["item"] for entry in saved["skipped"]] == ["train compile / bare"]
    assert "time budget" in out.with_suffix(".log").read_text()


@pytest.mark.slow
def test_dry_run_measures_every_section(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    result = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry-run", "--out", str(out), "--peak-tflops", "1"],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["meta"]["dry_run"] and data["skipped"] == [] and data["errors"] == []

    for mode in TRAIN_MODES:
        for path in ("bare", "lightning"):
            row = data["train"][mode][path]
            assert min(row["images_per_s"], row["warmup_s"], row["tflops"]) > 0, (mode, path)
            assert row["fraction_of_bf16_peak"] == pytest.approx(row["tflops"] / 1.0)
        assert data["train"][mode]["lightning_over_bare"] > 0
    assert set(data["train"]["bf16-mixed + channels_last + compile"]["compile_warmup_s"]) == {
        "bare",
        "lightning",
    }
    assert all(data["eval"][name]["images_per_s"] > 0 for name in ("fp32", "bf16 autocast"))
    for logits in ("fp32 logits", "bf16 logits"):
        assert all(data["loss"][logits][key]["ms"] > 0 for key in ("fused=auto", "fused=false"))
    flops = data["flops"]
    assert flops["forward_gflops_per_image"] > 0 and flops["peak_source"] == "--peak-tflops"
    assert flops["best"]["fraction_of_bf16_peak"] > 0

    lines = result.stdout.splitlines()
    assert len([line for line in lines if re.match(r"train \|.*\|\s+[\d.]+ images/s", line)]) == 8
    assert len([line for line in lines if re.match(r"eval +\|.* images/s", line)]) == 2
    assert len([line for line in lines if re.match(r"loss +\|.* ms fwd\+bwd", line)]) == 4
    assert any(line.startswith("flops | best") and "% of the 1 TFLOP/s" in line for line in lines)
    assert lines[-1].startswith("gpu_check: done") and "skipped: none" in lines[-1]
    assert out.with_suffix(".log").read_text().splitlines() == lines
