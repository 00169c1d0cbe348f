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

from src.sweeps.space import Parameter, check_parameter, parse_overrides, split_sweeps
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


def override_key(override: Override) -> str:
    """The key an override sets, without `+`/`~` and package (`sweep.slots`, `sweep/pruner`)."""
    return override.key_or_group


@dataclass
class SweepCommand:
    """A parsed sweep command: its composed config, the jobs' fixed overrides and the swept parameters."""

    config: DictConfig  # composed from the non-swept overrides, hydra node included
    fixed: list[Override]  # the overrides every job gets (runner-only keys removed)
    params: list[Parameter]  # what varies between jobs
    sweep_dir: Path
    argv: list[str]

    @property
    def search(self) -> bool:
        """An Optuna search (sweep=optuna), not a grid."""
        return str(self.config.sweep.driver) == "optuna"

    def fixed_texts(self) -> list[str]:
        """The fixed overrides as the jobs get them (as typed)."""
        return [o.input_line for o in self.fixed]


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
    what = sorted(o.input_line for o in overrides if not _matches(override_key(o), SCHEDULING_KEYS))
    digest = hashlib.sha1(json.dumps(what).encode()).hexdigest()[:8]
    return f"{prefix}-{digest}"


def sweep_dir_of(config: DictConfig, overrides: list[Override]) -> Path:
    """`hydra.sweep.dir` when the command sets it (as with `-m`), else `sweep.dir`."""
    if any(override_key(o) == "hydra.sweep.dir" for o in overrides):
        return Path(str(config.hydra.sweep.dir)).expanduser().absolute()
    return Path(str(config.sweep.dir)).expanduser().absolute()


def check_values_compose(command: SweepCommand) -> None:
    """Compose the config once per value of each list (and with each interval's low end), so a
    misspelled key or group option fails now, naming it, instead of in every job."""
    base = command.fixed_texts()
    for param in command.params:
        if param.is_list:
            trials = [f"{param.key}={text}" for text in param.texts()]
        else:
            trials = [param.assignment(param.distribution().low)]
        for trial in trials:
            try:
                compose_train_config([*base, trial])
            except UserError as err:
                raise UserError(f"the sweep's value {trial}: {err}") from None


def parse_command(argv: list[str]) -> SweepCommand:
    """Parse and check a sweep's command line; compose its config."""
    flags = [arg for arg in argv if arg.startswith("-") and arg not in IGNORED_FLAGS]
    if flags:
        raise UserError(f"src/sweep.py takes overrides only (as python src/train.py -m does), not {flags}")
    lines = [arg for arg in argv if arg not in IGNORED_FLAGS]
    overrides = parse_overrides(lines)
    plain = [o for o in overrides if not o.is_sweep_override()]
    for override in overrides:
        if override.is_sweep_override() and _matches(override_key(override), RUNNER_KEYS):
            raise UserError(f"{override.input_line}: the runner's own settings cannot be swept")
    config = compose_train_config([o.input_line for o in plain])
    with open_dict(config):
        if config.sweep.name is None:
            config.sweep.name = default_name(config, overrides)
    fixed, params = split_sweeps(overrides, OmegaConf.to_container(config.sweep.params, resolve=False))
    fixed = [o for o in fixed if not _matches(override_key(o), RUNNER_KEYS)]
    sweep_dir = sweep_dir_of(config, overrides)
    with open_dict(config):
        config.sweep.dir = str(sweep_dir)  # what a backend reads, whichever of the two keys set it
    command = SweepCommand(config, fixed, params, sweep_dir, list(argv))
    for param in params:
        check_parameter(param, search=command.search)
    if command.search and not params:
        raise UserError("sweep=optuna has nothing to search: give sweep.params or a sweep on the command line")
    return command
