"""scripts/gpu_check.sh: the prepared GPU run, tried on the CPU with --dry-run, and its pieces."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch

from scripts.budgeted_report import BudgetedReport
from scripts.gpu_check import (
    DRY_SIZES,
    NUM_CLASSES,
    TRAIN_MODES,
    amx_section,
    cpu_flags,
    peak_tflops,
)

ROOT = Path(__file__).resolve().parents[1]
AMX_SKIP = "no amx_bf16 flag in /proc/cpuinfo: tests/test_cpu_bf16.py needs a CPU with AMX-BF16"


def conv_gflops(width: float, side: int) -> float:
    """Forward GFLOPs of the dry run's FCN-8s counted from its convolutions' shapes (2 per multiply-add)."""
    from torch import nn

    from scripts.bench_train import compose_run

    model = hydra.utils.instantiate(compose_run(width, NUM_CLASSES).model).eval()
    total = []

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        if isinstance(module, nn.ConvTranspose2d):  # each input element meets every output channel
            total.append(2 * inputs[0].numel() * kernel * module.out_channels // module.in_channels)
        else:
            total.append(2 * output.numel() * kernel)

    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            module.register_forward_hook(count)
    with torch.no_grad():
        model(torch.zeros(1, 3, side, side))
    return sum(total) / 1e9


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

    sizes, spent = DRY_SIZES, data["item_seconds"]
    flops = data["flops"]
    assert flops["forward_gflops_per_image"] == pytest.approx(conv_gflops(sizes.width, sizes.side), rel=1e-6)
    assert flops["train_step_tflop"] == pytest.approx(3 * flops["forward_gflops_per_image"] * sizes.batch / 1000)
    for mode in TRAIN_MODES:
        rows = data["train"][mode]
        for path in ("bare", "lightning"):
            row = rows[path]
            # the timed steps saw batch x steps images, within the item's own time
            assert row["images_per_s"] * row["timed_s"] == pytest.approx(sizes.batch * sizes.steps)
            assert row["warmup_s"] + row["timed_s"] <= spent[f"train {mode} / {path}"] + 0.01, (mode, path)
            assert row["tflops"] == pytest.approx(3 * flops["forward_gflops_per_image"] * row["images_per_s"] / 1000)
            assert row["fraction_of_bf16_peak"] == pytest.approx(row["tflops"] / 1.0)
        assert rows["lightning_over_bare"] == pytest.approx(
            rows["lightning"]["images_per_s"] / rows["bare"]["images_per_s"]
        )
    assert set(data["train"]["bf16-mixed + channels_last + compile"]["compile_warmup_s"]) == {
        "bare",
        "lightning",
    }
    for name in ("fp32", "bf16 autocast"):  # batch x steps images timed within the item's time
        timed_s = sizes.batch * sizes.steps / data["eval"][name]["images_per_s"]
        assert timed_s <= spent[f"eval {name}"] + 0.01
    for logits in ("fp32 logits", "bf16 logits"):
        for key in ("fused=auto", "fused=false"):
            assert data["loss"][logits][key]["ms"] * sizes.steps / 1000 <= spent[f"loss {logits} / {key}"] + 0.01
    assert flops["peak_source"] == "--peak-tflops"
    best = max((rows[path]["tflops"], mode, path) for mode, rows in data["train"].items() for path in ("bare", "lightning"))
    assert flops["best"] == {"mode": best[1], "path": best[2], "tflops": best[0], "fraction_of_bf16_peak": best[0] / 1.0}
    if "amx_bf16" in cpu_flags():
        assert data["amx"]["ran"] and data["amx"]["pytest"]["returncode"] == 0
    else:
        assert data["amx"] == {"ran": False, "why": AMX_SKIP}
        assert f"amx   | skipped: {AMX_SKIP}" in result.stdout

    lines = result.stdout.splitlines()
    assert len([line for line in lines if re.match(r"train \|.*\|\s+[\d.]+ images/s", line)]) == 8
    assert len([line for line in lines if re.match(r"eval +\|.* images/s", line)]) == 2
    assert len([line for line in lines if re.match(r"loss +\|.* ms fwd\+bwd", line)]) == 4
    assert any(line.startswith("flops | best") and "% of the 1 TFLOP/s" in line for line in lines)
    assert lines[-1].startswith("gpu_check: done") and "skipped: none" in lines[-1]
    assert out.with_suffix(".log").read_text().splitlines() == lines


def test_amx_section_runs_the_tests_where_the_flag_is_and_says_so_where_not(tmp_path: Path) -> None:
    tests = tmp_path / "test_tiny.py"
    tests.write_text("import pytest\n\ndef test_one():\n    pass\n\n@pytest.mark.slow\ndef test_slow():\n    pass\n")
    cpuinfo = tmp_path / "cpuinfo"
    report = BudgetedReport(tmp_path / "check.json", budget_s=300.0, sections=["amx"], meta={})
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    amx_section(report, cpuinfo=cpuinfo, tests=str(tests))
    assert report.data["amx"]["ran"] is False and "no amx_bf16 flag" in report.data["amx"]["why"]

    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n")
    amx_section(report, markers="not slow", cpuinfo=cpuinfo, tests=str(tests))
    saved = json.loads((tmp_path / "check.json").read_text())["amx"]
    assert saved["ran"] is True
    assert {k: saved["pytest"][k] for k in ("returncode", "passed", "deselected")} == {
        "returncode": 0, "passed": 1, "deselected": 1,
    }  # fmt: skip
    log = (tmp_path / "check.log").read_text()
    assert "amx   | PASSED " in log and "test_tiny.py::test_one\n" in log and "1 passed, 1 deselected" in log
