"""The link between a job and its Optuna trial: which study, which trial, which metric, which pruner.

The runner puts it in the job's environment (`SEGLAB_SWEEP_TRIAL`, JSON); the job opens the study's
storage itself and reports to a real `optuna.trial.Trial` built from it. (A `FrozenTrial` from
`study.trials`, the usual workaround in Hydra #1954, never prunes: its `should_prune()` is always
False.) Talking to the storage directly, rather than through a file the runner watches, means the
pruner sees every other trial's values as they are reported, from any runner or machine that
shares the storage, with nothing in between to keep in step.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TRIAL_ENV = "SEGLAB_SWEEP_TRIAL"


def open_storage(location: str) -> Any:
    """An Optuna storage: an RDB URL (`postgresql://...`, `sqlite:///...`) or a journal file's path."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if "://" in location:
        return optuna.storages.RDBStorage(location)
    Path(location).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(location))


def build_pruner(spec: dict[str, Any] | None) -> Any:
    """The pruner a config describes (`_target_` and its arguments); Optuna's NopPruner for none."""
    import optuna

    if not spec:
        return optuna.pruners.NopPruner()
    import hydra

    return hydra.utils.instantiate(spec)


@dataclass
class TrialLink:
    """What a job needs to report to its trial."""

    storage: str
    study: str
    number: int
    monitor: str
    pruner: dict[str, Any] | None = None

    def to_env(self) -> dict[str, str]:
        """The environment entry the runner gives the job."""
        return {TRIAL_ENV: json.dumps(asdict(self))}

    @classmethod
    def from_env(cls) -> TrialLink | None:
        """The link the runner gave this process; None outside a search."""
        text = os.environ.get(TRIAL_ENV)
        return cls(**json.loads(text)) if text else None

    def open(self) -> Any:
        """The trial, as a live `optuna.trial.Trial` whose `should_prune()` asks the study's pruner."""
        import optuna

        storage = open_storage(self.storage)
        study = optuna.load_study(study_name=self.study, storage=storage, pruner=build_pruner(self.pruner))
        study_id = storage.get_study_id_from_name(self.study)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.number)
        return optuna.trial.Trial(study, trial_id)


def refuse_search_outside_runner(config: Any) -> None:
    """A search config (`sweep=optuna`, `hparams_search=...`) run by `python src/train.py` itself, not
    as a trial the runner started, would quietly train one run with the preset's fixed values."""
    from omegaconf import OmegaConf

    from src.utils.errors import UserError

    if OmegaConf.select(config, "sweep.driver") != "optuna" or os.environ.get(TRIAL_ENV):
        return
    raise UserError(
        "this config is an Optuna search (sweep=optuna): run it with python src/sweep.py and the same "
        "overrides (python src/train.py runs one of its trials when src/sweep.py starts it)"
    )


def tell_pruned(trial: Any) -> None:
    """Finish the trial as PRUNED (its value is its last reported one)."""
    import optuna

    trial.study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
