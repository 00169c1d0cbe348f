"""`python src/sweep.py hparams_search=focal_optuna`: a real Optuna search of src/train.py runs.

Needs the optional extra (`pip install -e ".[optuna]"`); skipped without it. Resume, pruning and
scheduling are tested with a fake trainer in tests/test_sweep.py.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

from src.sweeps.resources import cpu_count
from tests.conftest import SMOKE_DATA
from tests.helpers.cli import run_script

optuna = pytest.importorskip("optuna")

SEARCHED = ("loss.focal.gamma", "loss.focal.alpha", "loss.class_weights", "optim.lr")


@pytest.mark.slow
def test_focal_optuna_runs_its_trials_in_parallel_slots(data_dir: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_script(
        [
            sys.executable, "src/sweep.py", "hparams_search=focal_optuna", "debug=smoke", *SMOKE_DATA,
            f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path}/logs", f"hydra.sweep.dir={sweep}",
            "sweep.n_trials=2", "sweep.slots=2", "sweep.seed=0", "trainer.max_epochs=1",
        ],
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    from src.sweeps.trial import open_storage

    study = optuna.load_study(study_name=None, storage=open_storage(str(sweep / "optuna.journal")))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    for trial in study.trials:
        job = sweep / trial.user_attrs["run_dir"]
        overrides = dict(line.split("=", 1) for line in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        assert float(overrides["optim.lr"]) == trial.params["optim.lr"]
        assert set(SEARCHED) <= set(overrides) and "sweep.n_trials" not in overrides  # the runner's own
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        assert config["loss"]["focal"]["mode"] == "sigmoid"
        metrics = json.loads((job / "metrics.json").read_text())
        assert trial.value == metrics["final"]["val/mIoU_best"]  # what the job reached is what the study holds
        assert json.loads((job / "sweep_job.json").read_text())["cpu_threads"] == max(1, cpu_count() // 2)

    with (sweep / "summary.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [row["state"] for row in table] == ["complete", "complete"]
    ranked = [float(row["best val/mIoU"]) for row in table]
    assert ranked == sorted((t.value for t in study.trials), reverse=True)
    assert (sweep / "optuna_history.png").stat().st_size > 1000
