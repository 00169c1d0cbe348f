"""What the first run prints: no notice a user cannot act on, and last lines that say what to do next."""

from __future__ import annotations

import json
import os
import shlex
import sys
import warnings
from pathlib import Path

import pytest
from lightning.fabric.plugins.environments import SLURMEnvironment

from src.utils.lightning_console import quiet_lightning_notices
from tests.conftest import ROOT, SMOKE_DATA
from tests.helpers.cli import run_script

NOISE = (
    "litlogger",  # Lightning's advertisements: a hosted logger ...
    "litmodels",  # ... and a model registry (printed where Lightning adds a checkpoint callback itself)
    "`srun` command is available",  # SLURM's client installed, no allocation
    "LeafSpec",  # a deprecation inside Lightning
    "┃ FLOPs",  # the summary's all-zero column ...
    "Total FLOPs",  # ... and its zero total
    "Warning",
)


@pytest.fixture
def fake_srun(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH has an `srun` (as on a SLURM login node), outside any allocation."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"}


def test_smoke_run_prints_no_noise_and_ends_with_commands_to_paste(
    data_dir: Path, tmp_path: Path, fake_srun: dict[str, str]
) -> None:
    run_dir = tmp_path / "run"
    result = run_script(
        [sys.executable, "src/train.py", "debug=smoke", *SMOKE_DATA, f"paths.data_dir={data_dir}",
         f"hydra.run.dir={run_dir}", "trainer.max_epochs=1"],
        env=fake_srun,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    for noise in NOISE:
        assert noise not in console, f"{noise!r} printed:\n{console[-4000:]}"
    assert "┃ Name " in console and "Total params" in console  # the summary itself stays

    [best] = (run_dir / "checkpoints").glob("best-*.ckpt")
    tail = result.stdout.strip().splitlines()[-6:]
    best_miou = json.loads((run_dir / "metrics.json").read_text())["best"]["val/mIoU"]
    assert tail[0].endswith(f"best val/mIoU = {best_miou:.4f} (output in {run_dir})")
    images = data_dir / "synthetic_smoke" / "VOCdevkit" / "VOC2012" / "JPEGImages"
    assert tail[1:] == [
        f"best checkpoint: {best}",
        "look at the run:",
        f"  tensorboard --logdir {run_dir / 'tensorboard'}",
        f"  python src/eval.py ckpt_path={best}",
        f"  python src/predict.py ckpt_path={best} input={images}",
    ]
    # pasted as printed (where the run was started), eval scores the checkpoint
    command = shlex.split(tail[4])
    assert command[:2] == ["python", "src/eval.py"]
    evaluated = run_script(
        [sys.executable, *command[1:], f"hydra.run.dir={tmp_path / 'eval'}"], cwd=ROOT, env=fake_srun
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert (tmp_path / "eval" / "metrics.json").is_file()
    for noise in NOISE:  # eval's console too
        assert noise not in evaluated.stdout + evaluated.stderr, f"{noise!r} printed by eval.py"


@pytest.mark.parametrize(("in_allocation", "warned"), [(False, False), (True, True)])
def test_the_srun_warning_stays_only_inside_a_slurm_allocation(
    monkeypatch: pytest.MonkeyPatch, fake_srun: dict[str, str], in_allocation: bool, warned: bool
) -> None:
    monkeypatch.setenv("PATH", fake_srun["PATH"])
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    if in_allocation:  # salloc gives a job id; a task started without srun has no SLURM_NTASKS
        monkeypatch.setenv("SLURM_JOB_ID", "42")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning_notices()
        SLURMEnvironment._validate_srun_used()
    assert any("`srun` command is available" in str(w.message) for w in caught) is warned
