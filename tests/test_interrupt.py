"""Interruptions from the command line: SIGTERM / Ctrl-C write last.ckpt and exit; NaN stops with the step."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import SMOKE_DATA
from tests.helpers.cli import run_script

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 3  # debug=smoke: trainer.limit_train_batches=3


def train_cmd(out: Path, data_dir: Path, *overrides: str) -> list[str]:
    """`python src/train.py debug=smoke ...` writing its run dir at `out`."""
    return [
        sys.executable, "src/train.py", "debug=smoke", *SMOKE_DATA, f"paths.data_dir={data_dir}",
        f"paths.log_dir={out.parent}/logs", f"hydra.run.dir={out}", *overrides,
    ]  # fmt: skip


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start a run with its output in a file (a full pipe would stall it)."""
    with log.open("w") as sink:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, text=True)


def wait_for_file(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    """Poll until `path` exists; fail with the run's output if the run ends or takes too long."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} never appeared; the run said:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def stop_with(signum: int, data_dir: Path, tmp_path: Path) -> tuple[int, str, Path]:
    """Train a long run, send `signum` once epoch 1 is checkpointed; return exit status, output, last.ckpt."""
    run, log = tmp_path / "run", tmp_path / "run.log"
    proc = start(train_cmd(run, data_dir, "trainer.max_epochs=1000"), log)
    last = run / "checkpoints" / "last.ckpt"
    wait_for_file(last, proc, log)  # epoch 1 is done: the run is training epoch 2 now
    proc.send_signal(signum)
    try:
        # it stops after the current step (at most the current validation): seconds, not epochs
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the run did not stop within 60 s of {signal.Signals(signum).name}")
    return proc.returncode, log.read_text(), last


def saved_step(output: str, name: str) -> int:
    """The global step the interrupt message says was saved."""
    found = re.search(rf"stopped by {name} at global step (\d+); saved (\S+)", output)
    assert found, f"no interrupt message in:\n{output[-3000:]}"
    return int(found.group(1))


@pytest.mark.slow
def test_sigterm_writes_last_ckpt_and_the_run_resumes(data_dir: Path, tmp_path: Path) -> None:
    status, output, last = stop_with(signal.SIGTERM, data_dir, tmp_path)
    assert status == 128 + signal.SIGTERM, output[-3000:]
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == saved_step(output, "SIGTERM") >= STEPS_PER_EPOCH

    # finish the interrupted epoch: the step count continues from the checkpoint
    epochs = state["epoch"] + 1
    resumed = run_script(
        train_cmd(tmp_path / "resumed", data_dir, f"ckpt_path={last}", f"trainer.max_epochs={epochs}")
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert summary["global_step"] == STEPS_PER_EPOCH * epochs
    assert summary["final"]["epoch"] == epochs - 1


@pytest.mark.slow
def test_ctrl_c_writes_last_ckpt_and_exits_130(data_dir: Path, tmp_path: Path) -> None:
    status, output, last = stop_with(signal.SIGINT, data_dir, tmp_path)
    assert status == 128 + signal.SIGINT, output[-3000:]
    assert torch.load(last, weights_only=True)["global_step"] == saved_step(output, "SIGINT")
    assert "KeyboardInterrupt" not in output


@pytest.mark.slow
def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    data_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    nan_at_step_4 = (
        "+callbacks.fault._target_=tests.helpers.faults.FaultInjection",
        "+callbacks.fault.kind=nan_loss",
        "+callbacks.fault.at_step=4",
    )
    result = run_script(train_cmd(run, data_dir, *nan_at_step_4))
    assert result.returncode != 0
    assert "non-finite training loss (nan) at global step 4 (epoch 1, batch 1)" in result.stderr
    assert "Traceback" not in result.stderr
    # the end-of-epoch-1 checkpoint is the last one, untouched and finite
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == STEPS_PER_EPOCH
    assert all(
        torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point()
    )
    assert not (run / "metrics.json").exists()
