"""`python src/sweep.py <overrides>`: the config those overrides compose, what varies, and where it goes.

The command line is the one `python src/train.py -m` takes. Overrides of `sweep.*` and Hydra's
sweep and launcher settings are the runner's own; every other override reaches each job, with the
swept ones replaced by that job's values.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from src.sweeps.space import Parameter, check_parameter, parse_overrides, with_config_params
from src.utils.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"
CONFIG_NAME = "train"
# Keys only the runner reads: never passed to a job (each job is a single run in its own dir).
RUNNER_KEYS = (
    "sweep",
    "hydra.sweep",
    "hydra.sweeper",
    "hydra/sweeper",
    "hydra.launcher",
    "hydra/launcher",
    "hydra.mode",
    "hydra.run",
    "hydra.job.num",
)
# ...of which these change how the sweep runs, not what it runs: left out of its default name, so
# the same sweep is found again with more slots, another backend or a larger budget.
SCHEDULING_KEYS = (
    "sweep.slots",
    "sweep.devices_per_job",
    "sweep.threads_per_job",
    "sweep.backend",
    "sweep.n_trials",
    "sweep.max_retry",
    "sweep.stop_grace_s",
    "sweep.name",
    "sweep.dir",
    "sweep.storage",
    "hydra.sweep",
    "hydra.launcher",
    "hydra/launcher",
    "hydra.mode",
)
IGNORED_FLAGS = ("-m", "--multirun")


def _matches(key: str, names: tuple[str, ...]) -> bool:
    return any(key == name or key.startswith(name + ".") or key.startswith(name + "/") for name in names)


@dataclass
class SweepCommand:
    """A parsed sweep command: its composed config and the jobs' overrides, some of them swept."""

    config: DictConfig  # composed from the non-swept overrides, hydra node included
    overrides: list[Override]  # what the jobs get, in the command's order (runner-only keys removed)
    sweep_dir: Path
    argv: list[str]

    @property
    def params(self) -> list[Parameter]:
        """The swept overrides."""
        return [Parameter(o) for o in self.overrides if o.is_sweep_override()]

    @property
    def search(self) -> bool:
        """An Optuna search (sweep=optuna), not a grid."""
        return str(self.config.sweep.driver) == "optuna"

    def job_overrides(self, values: dict[str, str]) -> list[str]:
        """One job's overrides: the swept ones given by `values` (parameter name -> `key=text`)."""
        return [values[Parameter(o).name] if o.is_sweep_override() else o.input_line for o in self.overrides]


def compose_train_config(overrides: list[str]) -> DictConfig:
    """conf/train.yaml with `overrides`, as the jobs will compose it (Hydra's own node included)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=CONFIG_NAME, overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(f"cannot compose conf/{CONFIG_NAME}.yaml with {' '.join(overrides)}: {err}") from None


def default_name(config: DictConfig, overrides: list[Override]) -> str:
    """`<preset or driver>-<hash of what the command runs>`: the same command finds the same sweep."""
    choices = OmegaConf.select(config, "hydra.runtime.choices", default={}) or {}
    prefix = choices.get("hparams_search") or str(config.sweep.driver)
    what = sorted(o.input_line for o in overrides if not _matches(o.key_or_group, SCHEDULING_KEYS))
    digest = hashlib.sha1(json.dumps(what).encode()).hexdigest()[:8]
    return f"{prefix}-{digest}"


def sweep_dir_of(config: DictConfig, overrides: list[Override]) -> Path:
    """`hydra.sweep.dir` when the command sets it (as with `-m`), else `sweep.dir`."""
    if any(o.key_or_group == "hydra.sweep.dir" for o in overrides):
        return Path(str(config.hydra.sweep.dir)).expanduser().absolute()
    return Path(str(config.sweep.dir)).expanduser().absolute()


def first_values(param: Parameter) -> list[str]:
    """The overrides that check a parameter composes: each option of a config group (`loss=a,b`),
    else one value (any value of a plain key composes if one does)."""
    if not param.is_list:
        return [param.assignment(param.distribution().low)]
    options = [f"{param.key}={text}" for text in param.texts()]
    return options if "." not in param.name else options[:1]


def check_values_compose(command: SweepCommand) -> None:
    """Compose the jobs' config with the swept values, so a misspelled key or group option fails now,
    named, instead of in every job."""
    values = {p.name: first_values(p) for p in command.params}
    trials = [command.job_overrides({name: checks[0] for name, checks in values.items()})]
    for name, checks in values.items():
        trials += [command.job_overrides({**{n: c[0] for n, c in values.items()}, name: check}) for check in checks[1:]]
    for trial in trials:
        try:
            compose_train_config(trial)
        except UserError as err:
            raise UserError(f"the sweep's values {' '.join(trial)}: {err}") from None


def parse_command(argv: list[str]) -> SweepCommand:
    """Parse and check a sweep's command line; compose its config."""
    flags = [arg for arg in argv if arg.startswith("-") and arg not in IGNORED_FLAGS]
    if flags:
        raise UserError(f"src/sweep.py takes overrides only (as python src/train.py -m does), not {flags}")
    lines = [arg for arg in argv if arg not in IGNORED_FLAGS]
    overrides = parse_overrides(lines)
    plain = [o for o in overrides if not o.is_sweep_override()]
    for override in overrides:
        if override.is_sweep_override() and _matches(override.key_or_group, RUNNER_KEYS):
            raise UserError(f"{override.input_line}: the runner's own settings cannot be swept")
    config = compose_train_config([o.input_line for o in plain])
    with open_dict(config):
        if config.sweep.name is None:
            config.sweep.name = default_name(config, overrides)
    jobs = with_config_params(overrides, OmegaConf.to_container(config.sweep.params, resolve=False))
    jobs = [o for o in jobs if not _matches(o.key_or_group, RUNNER_KEYS)]
    sweep_dir = sweep_dir_of(config, overrides)
    with open_dict(config):
        config.sweep.dir = str(sweep_dir)  # what a backend reads, whichever of the two keys set it
    command = SweepCommand(config, jobs, sweep_dir, list(argv))
    for param in command.params:
        check_parameter(param, search=command.search)
    if command.search:
        check_search(command)
    return command


def check_search(command: SweepCommand) -> None:
    """A search has something to search and, unless it is a grid of lists, a number of trials."""
    try:
        import optuna  # noqa: F401
    except ModuleNotFoundError as err:
        raise UserError(f"sweep=optuna needs seglab's optuna extra ({err}): pip install -e '.[optuna]'") from None
    if not command.params:
        raise UserError("sweep=optuna has nothing to search: give sweep.params or a sweep on the command line")
    if command.config.sweep.n_trials is None and not all(p.is_list for p in command.params):
        raise UserError("sweep.n_trials is needed for a search with interval(): pass sweep.n_trials=<N>")
