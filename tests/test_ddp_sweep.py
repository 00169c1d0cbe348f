"""`trainer.devices=2` from the command line, alone and inside Hydra multiruns (2 gloo processes on CPU).

Each test runs `python src/train.py ...` the way a user would and checks what lands on disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from src.callbacks.metrics_file import git_revision
from tests.conftest import SMOKE_DATA
from tests.helpers.cli import processes_mentioning, run_in_session

pytestmark = pytest.mark.slow
TIMEOUT_S = 300  # 5x a run on 2 shared cores; a hang fails the test instead of blocking CI


def run_train(
    *args: str, data_dir: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run src/train.py in its own session; on timeout kill the whole session (DDP children included)."""
    command = [sys.executable, "src/train.py", *args, "debug=smoke", *SMOKE_DATA, f"paths.data_dir={data_dir}"]
    full_env = {
        k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")
    }
    return run_in_session(command, TIMEOUT_S, env={**full_env, **(env or {})})


def metrics(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


def assert_complete_job(job_dir: Path, world_size: int) -> dict:
    """One TensorBoard run, checkpoints, one log file and a metrics.json recording `world_size`."""
    assert len(list((job_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert (job_dir / "checkpoints" / "last.ckpt").exists()
    assert sorted(p.name for p in job_dir.glob("*.log")) == ["config_tree.log", "train.log"]  # rank 0 only
    summary = metrics(job_dir)
    assert summary["world_size"] == world_size and summary["num_nodes"] == 1
    assert summary["precision"] == "32-true" and summary["wall_time_s"] > 0
    # read again, not cached: a commit may have landed since this test process first asked
    assert summary["git"]["commit"] == git_revision.__wrapped__()["commit"]
    return summary


def test_devices_2_is_one_run_of_two_processes(tmp_path: Path, data_dir: Path) -> None:
    result = run_train("trainer.devices=2", f"paths.log_dir={tmp_path}/logs", data_dir=data_dir)
    assert result.returncode == 0, result.stdout[-4000:]
    runs = list((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 1
    assert_complete_job(runs[0], world_size=2)
    assert metrics(runs[0])["seed"] == 42
    assert "MEMBER: 2/2" in result.stdout  # rank 1 joined
    assert len(list(tmp_path.rglob("metrics.json"))) == 1


def test_multirun_devices_1_then_2_leaves_one_dir_per_job(tmp_path: Path, data_dir: Path) -> None:
    # one sweep covers both: a DDP job after a single-process one in the same Hydra process, and
    # each job's overrides (here devices=2 itself: rank 1 only joins if it got them) reaching its children
    sweep = tmp_path / "sweep"
    result = run_train(
        "-m",
        "trainer.devices=1,2",
        "seed=7",
        "trainer.max_epochs=1",
        f"paths.log_dir={tmp_path}/logs",
        f"hydra.sweep.dir={sweep}",
        data_dir=data_dir,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    assert not (tmp_path / "logs").exists()  # no child ran a run (or a sweep) of its own elsewhere
    assert len(list(tmp_path.rglob("metrics.json"))) == 2
    for num, world_size in [(0, 1), (1, 2)]:
        assert assert_complete_job(sweep / str(num), world_size=world_size)["seed"] == 7
    # the DDP job's child was launched into its job's dir with its job number (its command is logged)
    log = (sweep / "1" / "train.log").read_text()
    assert f"hydra.run.dir='{sweep / '1'}'" in log and "hydra.job.num=1" in log
    assert result.stdout.count("MEMBER: 2/2") == 1  # the second job really had a second process


def test_crash_in_one_jobs_rank_1_fails_that_job_only(tmp_path: Path, data_dir: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_train(
        "-m",
        "trainer.devices=2",
        "seed=1,2",
        "trainer.max_epochs=1",
        f"paths.log_dir={tmp_path}/logs",
        f"hydra.sweep.dir={sweep}",
        "+callbacks.crash._target_=tests.helpers.faults.CrashOnRank",
        "+callbacks.crash.rank=1",
        "+callbacks.crash.job=0",
        data_dir=data_dir,
    )
    assert result.returncode != 0  # Hydra reports the failed job at the end of the sweep
    assert "seglab fault injection" in result.stdout  # rank 1's own error is printed
    assert not (sweep / "0" / "metrics.json").exists()
    assert assert_complete_job(sweep / "1", world_size=2)["seed"] == 2
    assert processes_mentioning(str(sweep)) == []  # no child of the failed job left behind
