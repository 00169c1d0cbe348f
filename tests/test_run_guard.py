"""A run resumes only when asked and never changes another run's files (the commands a user types)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.utils.run_guard import config_differences, hpc_requeue_checkpoint, resume_checkpoint
from tests.conftest import SMOKE_DATA
from tests.helpers.cli import run_script

pytestmark = pytest.mark.slow


def train(run_dir: Path, data_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`python src/train.py debug=smoke ... hydra.run.dir=<run_dir>` as a user runs it."""
    command = [
        sys.executable, "src/train.py", "debug=smoke", *SMOKE_DATA, "trainer.max_epochs=1",
        f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}", *overrides,
    ]  # fmt: skip
    return run_script(command)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (dotfiles included) with the hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A finished one-epoch run in a fixed dir, started with `ckpt_path=last` (a cluster job's command)."""
    run_dir = tmp_path_factory.mktemp("guard") / "x"
    result = train(run_dir, data_dir, "optim.lr=1e-3", "ckpt_path=last")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "holds no checkpoints/last.ckpt yet; starting a new run" in result.stdout + result.stderr
    assert "called without a model" not in result.stdout + result.stderr  # no implicit resume
    return run_dir


def test_a_second_run_in_the_same_dir_stops_before_touching_anything(first_run, data_dir) -> None:
    before = snapshot(first_run)
    result = train(first_run, data_dir, "optim.lr=0.5", "loss=focal_dice")
    assert result.returncode == 1
    assert f"{first_run} already holds another run" in result.stderr
    assert "ckpt_path=last" in result.stderr and "hydra.run.dir" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(first_run) == before  # .hydra/config.yaml, train.log, checkpoints, metrics.json


def test_a_resume_that_changes_what_the_checkpoint_means_is_refused(first_run, data_dir) -> None:
    before = snapshot(first_run)
    result = train(first_run, data_dir, "ckpt_path=last", "optim.lr=0.5", "loss=focal_dice")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    message = result.stderr
    assert "cannot resume" in message and "checkpoints/last.ckpt" in message
    for key in ("loss.ce (only in the checkpoint)", "loss.focal (only in this run)", "optim.lr: 0.001 -> 0.5"):
        assert key in message, message
    assert "module.optimizer" not in message  # the interpolated copy is not reported twice
    assert snapshot(first_run) == before


def test_resuming_a_finished_run_reports_no_metric(first_run, data_dir) -> None:
    metrics = (first_run / "metrics.json").read_bytes()
    result = train(first_run, data_dir, "ckpt_path=last", "optim.lr=1e-3")
    assert result.returncode == 1 and "nothing was trained" in result.stderr
    assert "nan" not in result.stdout.lower().split("best val/miou")[-1]  # no `best val/mIoU = nan`
    assert (first_run / "metrics.json").read_bytes() == metrics


def test_resume_with_a_longer_schedule_continues_the_run(first_run, data_dir) -> None:
    result = train(first_run, data_dir, "ckpt_path=last", "optim.lr=1e-3", "trainer.max_epochs=3")
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout + result.stderr
    assert "resuming from" in printed and "(ckpt_path=last), global step 3" in printed
    assert "poly LR: 3 steps in the checkpoint, 9 in this run: stretched" in printed
    summary = json.loads((first_run / "metrics.json").read_text())
    assert summary["final"]["epoch"] == 2 and summary["global_step"] == 9
    events = EventAccumulator(str(first_run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    lr = {e.step: e.value for e in events.Scalars("lr-AdamW")}
    # poly over 9 steps: the LR at step 3 is lr0 * (1 - 3/9)^0.9, not the old schedule's 0
    assert lr[3] == pytest.approx(1e-3 * (2 / 3) ** 0.9, rel=1e-4)


def test_a_sweep_into_a_dir_with_earlier_jobs_is_refused(tmp_path: Path, data_dir: Path) -> None:
    sweep = tmp_path / "sweep"
    (sweep / "0" / "checkpoints").mkdir(parents=True)
    (sweep / "0" / "checkpoints" / "last.ckpt").write_bytes(b"an earlier job's checkpoint")
    (sweep / "0" / "metrics.json").write_text('{"best": {}}')
    before = snapshot(sweep)
    command = [
        sys.executable, "src/train.py", "-m", "debug=smoke", *SMOKE_DATA, "seed=1,2",
        f"paths.data_dir={data_dir}", f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    result = run_script(command)
    assert result.returncode == 1 and f"{sweep / '0'} already holds another run" in result.stderr
    assert snapshot(sweep) == before  # no multirun.yaml, no job dir, nothing rewritten


def test_only_what_the_checkpoint_means_is_compared() -> None:
    stored = {
        "model": {"backbone": {"width": 0.25, "weights": None}, "init_from": None},
        "data": {"root": "/a", "num_workers": 2, "batch_size": 16},
        "trainer": {"max_epochs": 30},
        "optim": {"lr": 1e-3},
    }
    moved = {
        "model": {"backbone": {"width": 0.25, "weights": "/w.pth"}, "init_from": "/c.ckpt"},
        "data": {"root": "/b", "num_workers": 8, "batch_size": 16},
        "trainer": {"max_epochs": 60},
        "optim": {"lr": 1e-3},
    }
    assert config_differences(moved, stored) == []  # paths, loader and run length may change
    moved["data"]["batch_size"] = 8
    moved["model"]["backbone"]["width"] = 0.5
    assert config_differences(moved, stored) == [
        "data.batch_size: 16 -> 8",
        "model.backbone.width: 0.25 -> 0.5",
    ]


def test_lightning_slurm_requeue_checkpoint_resumes_only_in_a_requeued_job(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"1")
    (tmp_path / "hpc_ckpt_2.ckpt").write_bytes(b"2")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert hpc_requeue_checkpoint(tmp_path) is None and resume_checkpoint(None, tmp_path) is None
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert resume_checkpoint(None, tmp_path) == tmp_path / "hpc_ckpt_2.ckpt"
