"""An Optuna search: the runner asks the study for each trial's values and tells it how the trial ended.

The study lives in Optuna's own storage: a journal file in the sweep dir by default, or an RDB that
several runners (on several machines) share. Each trial's job reports its metric to the pruner
itself (src/sweeps/trial.py, src/callbacks/pruning.py) and finishes the trial as PRUNED when told
to stop; the runner finishes every other trial: COMPLETE with the job's final value of
`sweep.metric` (its metrics.json), or FAIL.

Interrupted trials are failed and re-queued as a copy with the same parameters, the same run dir
and the intermediate values reported so far (the system attributes `failed_trial` and
`retry_history` that Optuna's `RetryFailedTrialCallback` uses), and the copy continues from the
dir's last checkpoint. `sweep.n_trials` counts finished trials: complete, pruned, and failed ones
that were not re-queued.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from src.sweeps.command import SweepCommand
from src.sweeps.journal import COMPLETE, FAILED, INTERRUPTED, INTERRUPTED_CODES, PRUNED
from src.sweeps.scheduler import PlannedJob
from src.sweeps.space import Parameter
from src.sweeps.trial import TrialLink, build_pruner, open_storage

log = logging.getLogger(__name__)

STUDY_JOURNAL = "optuna.journal"
# Trial attributes the runner sets: the job dir (relative to the sweep dir) and the sweep dir that
# owns the trial (a runner re-queues only its own sweep dir's orphans).
RUN_DIR_ATTR, SWEEP_DIR_ATTR = "run_dir", "sweep_dir"
JOB_FAULTS_ATTR = "job_faults"


def storage_location(storage: str | None, sweep_dir: Path) -> str:
    """`sweep.storage` as a URL or a journal file path; null: the journal file in the sweep dir."""
    if not storage:
        return str(sweep_dir / STUDY_JOURNAL)
    return storage if "://" in storage else str(Path(storage).expanduser().absolute())


def final_value(run_dir: Path, metric: str) -> float | None:
    """The job's final value of `metric` from its metrics.json (None if missing or not finite)."""
    try:
        summary = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    value = (summary.get("final") or {}).get(metric)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def build_sampler(config: Any, params: list[Parameter]) -> Any:
    """`sweep.sampler` when set; else GridSampler for a grid of plain lists, TPE otherwise."""
    import hydra
    import optuna

    if config.sampler is not None:
        spec = OmegaConf.to_container(config.sampler, resolve=True)
        if spec.get("_target_", "").endswith("GridSampler") and "search_space" not in spec:
            spec["search_space"] = {p.name: p.choices() for p in params}
        return hydra.utils.instantiate(spec)
    if all(p.is_list for p in params):
        return optuna.samplers.GridSampler({p.name: p.choices() for p in params}, seed=config.seed)
    return optuna.samplers.TPESampler(seed=config.seed)


def grid_size(params: list[Parameter]) -> int | None:
    """The number of points of a grid of lists (None when a parameter is an interval)."""
    if not all(p.is_list for p in params):
        return None
    return math.prod(len(p.texts()) for p in params)


class OptunaDriver:
    """Asks the study for trials until `sweep.n_trials` have finished; tells it how each ended."""

    def __init__(self, command: SweepCommand) -> None:
        import optuna

        self.optuna = optuna
        config = command.config.sweep
        self.sweep_dir = command.sweep_dir
        self.command = command
        self.params = {p.name: p for p in command.params}
        self.distributions = {p.name: p.distribution() for p in command.params}
        self.metric, self.monitor = str(config.metric), str(config.monitor)
        self.max_retry = int(config.max_retry)
        self.storage = storage_location(config.storage, self.sweep_dir)
        self.pruner_spec = OmegaConf.to_container(config.pruner, resolve=True) if config.pruner else None
        self.n_trials = self._budget(config.n_trials, command.params)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the runner logs each trial itself
        self.study = optuna.create_study(
            study_name=str(config.study_name),
            storage=open_storage(self.storage),
            sampler=build_sampler(config, command.params),
            pruner=build_pruner(self.pruner_spec),
            direction=str(config.direction),
            load_if_exists=True,
        )
        self._reclaim_orphans()

    @staticmethod
    def _budget(n_trials: int | None, params: list[Parameter]) -> int:
        size = grid_size(params)
        if n_trials is None:
            return size  # a grid of lists (src/sweeps/command.py refuses n_trials=null otherwise)
        # the grid sampler would walk its points again once every one has been tried
        return min(int(n_trials), size) if size is not None else int(n_trials)

    def _tell(self, number: int, value: float | None = None, state: Any = None) -> None:
        """`study.tell`, where GridSampler's call of `study.stop()` once its grid is covered (allowed
        only inside `study.optimize`) is not an error: the trial is stored by then, and the budget
        ends the search."""
        try:
            self.study.tell(number, value, state=state)
        except RuntimeError as err:
            if "Study.stop" not in str(err):
                raise

    def _trials(self, *states: Any) -> list[Any]:
        return self.study.get_trials(deepcopy=False, states=states or None)

    def _owned(self, trial: Any) -> bool:
        return trial.user_attrs.get(SWEEP_DIR_ATTR) == str(self.sweep_dir)

    def _reclaim_orphans(self) -> None:
        """Trials of this sweep dir still RUNNING belong to a runner that died (this one holds the
        dir's lock): finish those whose job finished, re-queue the others."""
        for trial in self._trials(self.optuna.trial.TrialState.RUNNING):
            if not self._owned(trial):
                continue
            run_dir = self.sweep_dir / trial.user_attrs[RUN_DIR_ATTR]
            value = final_value(run_dir, self.metric)
            metrics = run_dir / "metrics.json"
            if value is not None and metrics.stat().st_mtime >= trial.datetime_start.timestamp():
                self._tell(trial.number, value)
                log.info("trial %d had finished with %s = %.4f", trial.number, self.metric, value)
                continue
            self._fail_and_requeue(trial, job_fault=False)

    def _fail_and_requeue(self, trial: Any, job_fault: bool) -> bool:
        """Fail the trial and add a copy to continue it (unless its job faults passed `max_retry`)."""
        state = self.optuna.trial.TrialState
        if trial.state == state.RUNNING:
            self._tell(trial.number, state=state.FAIL)
        faults = int(trial.system_attrs.get(JOB_FAULTS_ATTR, 0)) + int(job_fault)
        if faults > self.max_retry:
            return False
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        system_attrs = {
            **trial.system_attrs,
            "failed_trial": trial.system_attrs.get("failed_trial", trial.number),
            "retry_history": history,
            JOB_FAULTS_ATTR: faults,
        }
        self.study.add_trial(
            self.optuna.trial.create_trial(
                state=state.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs=trial.user_attrs,
                system_attrs=system_attrs,
                intermediate_values=trial.intermediate_values,
            )
        )
        log.info("trial %d re-queued to continue from its checkpoint", trial.number)
        return True

    def _budget_left(self) -> bool:
        trials = self._trials()
        waiting = self.optuna.trial.TrialState.WAITING
        if any(t.state == waiting for t in trials):
            return True
        requeued = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
        failed = self.optuna.trial.TrialState.FAIL
        counted = sum(1 for t in trials if not (t.state == failed and t.number in requeued))
        return counted < self.n_trials

    def next_job(self) -> PlannedJob | None:
        """Ask the study for a trial (a re-queued one first), or None when the budget is spent."""
        if not self._budget_left():
            return None
        trial = self.study.ask(self.distributions)
        # a copy re-queued from this sweep dir continues in its dir; one from another runner's dir
        # (a shared study) starts afresh here
        continues = self._owned(trial) and RUN_DIR_ATTR in trial.user_attrs
        name = trial.user_attrs[RUN_DIR_ATTR] if continues else str(trial.number)
        overrides = self.command.job_overrides({n: self.params[n].assignment(v) for n, v in trial.params.items()})
        if not continues:
            trial.set_user_attr(RUN_DIR_ATTR, name)
            trial.set_user_attr(SWEEP_DIR_ATTR, str(self.sweep_dir))
        link = TrialLink(self.storage, self.study.study_name, trial.number, self.monitor, self.pruner_spec)
        return PlannedJob(trial.number, name, overrides, resume=continues, env=link.to_env())

    def finished(self, job: PlannedJob, exit_code: int, stopped: bool) -> str:
        """Tell the study how the trial ended (PRUNED was told by the job itself)."""
        trial = self.study.get_trials(deepcopy=False)[job.number]
        fail = self.optuna.trial.TrialState.FAIL
        if trial.state == self.optuna.trial.TrialState.PRUNED:
            return PRUNED
        if stopped or exit_code in INTERRUPTED_CODES:
            return INTERRUPTED if self._fail_and_requeue(trial, job_fault=not stopped) else FAILED
        value = final_value(self.sweep_dir / job.name, self.metric) if exit_code == 0 else None
        if value is not None:
            self._tell(job.number, value)
            return COMPLETE
        if exit_code == 0:
            log.error("trial %d: its metrics.json has no finite final %s", job.number, self.metric)
        self._tell(job.number, state=fail)
        return FAILED
