"""A run reports success only when it trained: tiny folders train, runs with no step fail clearly,
and a metrics.json that cannot be written ends in one line that says what is safe."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from src.data.folder import FolderDataModule
from tests.helpers.cli import run_script
from tests.helpers.toy_data import write_folder


@pytest.fixture(scope="module")
def two_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder dataset with 2 training images and 1 validation image."""
    root = tmp_path_factory.mktemp("two_images")
    write_folder(root, ["a", "b", "c"], splits={"train": ["a", "b"], "val": ["c"]})
    return root


def smoke(root: Path, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`python src/train.py debug=smoke data=folder data.root=<root>` into `run_dir`."""
    return run_script(
        [sys.executable, "src/train.py", "debug=smoke", "data=folder", f"data.root={root}",
         f"hydra.run.dir={run_dir}", f"paths.log_dir={run_dir.parent}/logs", *overrides],
    )  # fmt: skip


def error_line(result: subprocess.CompletedProcess) -> str:
    """The last line on stderr, where a failed run says why."""
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------- how many batches an epoch has


@pytest.mark.parametrize(
    ("images", "batch_size", "batches", "sizes"),
    [(2, 4, 1, [2]), (4, 4, 1, [4]), (5, 4, 1, [4]), (9, 4, 2, [4, 4]), (1, 4, 1, [1])],
)
def test_an_incomplete_batch_is_dropped_only_when_a_full_one_exists(
    tmp_path: Path, images: int, batch_size: int, batches: int, sizes: list[int]
) -> None:
    stems = [f"s{i}" for i in range(images + 1)]
    write_folder(tmp_path, stems, splits={"train": stems[:-1], "val": stems[-1:]})
    datamodule = FolderDataModule(str(tmp_path), num_classes=2, batch_size=batch_size, num_workers=0, pad_multiple=32)
    datamodule.setup("fit")
    assert datamodule.train_batches_per_device(world_size=1) == batches
    assert [len(batch["name"]) for batch in datamodule.train_dataloader()] == sizes


def test_per_process_batches_follow_the_distributed_split(tmp_path: Path) -> None:
    stems = [f"s{i}" for i in range(6)]
    write_folder(tmp_path, stems, splits={"train": stems[:5], "val": stems[5:]})
    datamodule = FolderDataModule(str(tmp_path), num_classes=2, batch_size=4, num_workers=0, pad_multiple=32)
    # 5 images on 2 processes: 3 each (DistributedSampler pads), 2 per process and batch
    assert datamodule.train_images_per_device(2) == 3 and datamodule.train_batches_per_device(2) == 1
    assert datamodule.train_batches_per_device(4) == 2  # 2 images each, 1 per process and batch


# ---------------------------------------------------------------- runs on tiny data


def test_smoke_trains_on_a_folder_of_two_images(two_images: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    started = time.monotonic()
    result = smoke(two_images, run_dir)
    span = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["global_step"] == 2  # 2 epochs of one batch of both images
    assert summary["final"]["epoch"] == 1 and summary["best"]["val/mIoU"] is not None
    assert 0 < summary["wall_time_s"] < span  # the fit's own time, inside the command's
    assert "split 'train' has 2 images per process, fewer than data.batch_size=4 (4 per process): " \
           "each epoch trains one batch of 2" in result.stdout  # fmt: skip


def test_a_run_with_no_training_batch_fails_before_fit(two_images: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = smoke(two_images, run_dir, "trainer.limit_train_batches=0")
    assert result.returncode != 0
    assert error_line(result) == (
        f"seglab: error: no training batch: split 'train' under {two_images} has 2 images, 2 per "
        "process on 1 process(es) (trainer.devices=1, trainer.num_nodes=1); data.batch_size=4 gives "
        "1 training batch(es) per epoch and trainer.limit_train_batches=0 keeps 0; set "
        "trainer.limit_train_batches to a positive number of batches (or 1.0 for all of them)"
    )
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "checkpoints").exists()


def test_a_fit_without_an_optimiser_step_fails_and_reports_no_metric(two_images: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = smoke(two_images, run_dir, "trainer.max_epochs=0")
    assert result.returncode != 0
    line = error_line(result)
    assert line.startswith("seglab: error: the fit ended after 0 optimiser steps (trainer.max_epochs=0")
    assert "best val/mIoU" not in result.stdout + result.stderr
    assert not (run_dir / "metrics.json").exists()


# ---------------------------------------------------------------- metrics.json that cannot be written


def fail_after_training(root: Path, run_dir: Path, fault: str, path: Path) -> str:
    """Train one epoch with the fault callback `fault` (tests/helpers/faults.py) on `path`; its error line."""
    result = smoke(
        root, run_dir, "trainer.max_epochs=1", f"+callbacks.fault._target_=tests.helpers.faults.{fault}",
        f"+callbacks.fault.path={path}",
    )  # fmt: skip
    assert result.returncode == 1
    return error_line(result)


def check_what_is_left(run_dir: Path, message: str) -> None:
    """Checkpoints intact (the message names the newest), no metrics.json and no temp file of it."""
    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in checkpoints} >= {"last.ckpt"} and len(checkpoints) == 2
    for path in checkpoints:
        assert torch.load(path, weights_only=True)["global_step"] == 1
    newest = max(checkpoints, key=lambda path: path.stat().st_mtime_ns)
    assert f"the newest: {newest}" in message
    assert not any(p.name.startswith((".metrics", "metrics")) for p in run_dir.iterdir())


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 48 MiB tmpfs mounted for the test (root only); skipped where mounting is not allowed."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_ends_in_one_line_and_leaves_no_temp_file(two_images: Path, small_disk: Path) -> None:
    run_dir = small_disk / "run"
    line = fail_after_training(two_images, run_dir, "FillDiskAfterTraining", small_disk)
    assert line.startswith(
        f"seglab: error: could not write {run_dir / 'metrics.json'}: No space left on device (errno 28); "
        "training finished and its checkpoints are intact"
    )
    check_what_is_left(run_dir, line)


@pytest.fixture
def unlock_after(tmp_path: Path):
    """Undo DenyWritesAfterTraining (an immutable folder cannot be deleted, even by root)."""
    folders: list[Path] = []
    yield folders.append
    for folder in folders:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=False)
        else:
            folder.chmod(0o755)


def test_a_folder_without_write_permission_ends_in_one_line(two_images: Path, tmp_path: Path, unlock_after) -> None:
    if os.geteuid() == 0 and shutil.which("chattr") is None:
        pytest.skip("root ignores permission bits; the immutable attribute needs chattr (e2fsprogs)")
    run_dir = tmp_path / "run"
    unlock_after(run_dir)
    line = fail_after_training(two_images, run_dir, "DenyWritesAfterTraining", run_dir)
    why = "Operation not permitted (errno 1)" if os.geteuid() == 0 else "Permission denied (errno 13)"
    assert line.startswith(f"seglab: error: could not write {run_dir / 'metrics.json'}: {why}; ")
    check_what_is_left(run_dir, line)
