"""`hparams_search=focal_optuna`: a persistent Optuna study that an interrupted search resumes.

Needs the optional extra (`pip install -e ".[optuna]"`); skipped without it.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import SMOKE_DATA
from tests.helpers.cli import run_script

optuna = pytest.importorskip("optuna")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

ROOT = Path(__file__).resolve().parents[1]
SEARCHED = ("loss.focal.gamma", "loss.focal.alpha", "loss.class_weights", "optim.lr")


def search_cmd(data_dir: Path, log_dir: Path, trials: int) -> list[str]:
    """A tiny focal_optuna search (one short epoch per trial) logging under `log_dir`."""
    return [
        sys.executable, "src/train.py", "hparams_search=focal_optuna", "debug=smoke", *SMOKE_DATA,
        f"paths.data_dir={data_dir}", f"paths.log_dir={log_dir}", f"hydra.sweeper.n_trials={trials}",
        "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
    ]  # fmt: skip


def load_study(log_dir: Path):
    """The study as stored in SQLite under the study dir."""
    storage = f"sqlite:///{log_dir}/train/optuna/focal_optuna/optuna.db"
    return optuna.load_study(study_name="focal_optuna", storage=storage)


def job_overrides(job: Path) -> dict[str, str]:
    lines = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    return dict(line.split("=", 1) for line in lines)


@pytest.mark.slow
def test_interrupted_search_resumes_from_the_stored_study(data_dir: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    study_dir = logs / "train" / "optuna" / "focal_optuna"
    with (tmp_path / "first.log").open("w") as sink:
        proc = subprocess.Popen(
            search_cmd(data_dir, logs, 3), cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 300
    while not list(study_dir.glob("*/2/.hydra/overrides.yaml")):  # trials 0 and 1 are done
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("trial 2 never started:\n" + (tmp_path / "first.log").read_text()[-3000:])
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # pre-empted during trial 2
    assert proc.wait(timeout=120) != 0
    before = load_study(logs).trials
    assert [t.state.name for t in before[:2]] == ["COMPLETE", "COMPLETE"] and len(before) == 3

    again = run_script(search_cmd(data_dir, logs, 1), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming the study stored in" in again.stdout + again.stderr
    assert "alembic" not in again.stdout + again.stderr  # no migration chatter
    assert "Context impl" not in again.stdout + again.stderr
    after = load_study(logs).trials
    assert [t.number for t in after] == [0, 1, 2, 3]  # numbered after the stored trials
    assert [(t.params, t.value) for t in after[:2]] == [(t.params, t.value) for t in before[:2]]
    assert after[3].state.name == "COMPLETE"
    assert after[3].params != after[0].params  # the sampler did not start over

    sweeps = sorted(p for p in study_dir.iterdir() if p.is_dir())
    assert len(sweeps) == 2  # the restart wrote beside the first sweep, overwriting nothing
    for trial in after[:2]:  # the first sweep's finished jobs: what the study holds is what they ran
        job = sweeps[0] / str(trial.number)
        overrides = job_overrides(job)
        assert set(SEARCHED) <= set(overrides)
        assert float(overrides["optim.lr"]) == trial.params["optim.lr"]
        assert trial.value == json.loads((job / "metrics.json").read_text())["best"]["val/mIoU"]
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        assert config["loss"]["focal"]["mode"] == "sigmoid"
    summary = run_script([sys.executable, "scripts/summarize_sweep.py", str(study_dir)])
    assert summary.returncode == 0, summary.stderr
    with (study_dir / "summary.csv").open() as f:
        table = list(csv.DictReader(f))
    statuses = sorted(row["status"] for row in table)
    assert statuses == ["failed", "ok", "ok", "ok"]  # the interrupted trial is listed, not hidden
    ranked = [float(row["best val/mIoU"]) for row in table if row["status"] == "ok"]
    finished = [t.value for t in after if t.state.name == "COMPLETE"]
    assert ranked == sorted(finished, reverse=True)  # the summary ranks the jobs by their score
