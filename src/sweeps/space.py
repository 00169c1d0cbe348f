"""A sweep's parameters in Hydra's override grammar, as grid points or as Optuna distributions.

`a=1,2`, `choice(x,y)` and `range(1,4)` are lists: a grid walks them (as `-m` does) and an Optuna
search draws from them as categories (an integer range as integers). `interval(0,5)` is a float
range, `tag(int, interval(1,8))` an integer one and `tag(log, interval(1e-4,1e-2))` a log-scaled
one; only a search can draw from those. Hydra parses every override (`hydra.core.override_parser`),
so quoting and escaping are Hydra's own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
)
from hydra.errors import HydraException

from src.utils.errors import UserError

# Values an Optuna category may hold as they are; any other value (a list, a dict) is kept as its
# override text.
_PLAIN = (type(None), bool, int, float, str)


def parse_overrides(lines: Iterable[str]) -> list[Override]:
    """Parse command-line overrides with Hydra's parser; a bad one is a UserError quoting Hydra."""
    parser = OverridesParser.create()
    parsed = []
    for line in lines:
        try:
            parsed += parser.parse_overrides([line])
        except HydraException as err:
            raise UserError(f"cannot parse the override {line!r}: {err}") from None
    return parsed


@dataclass
class Parameter:
    """One swept override: its key as typed (`+k`, `group`, `a.b`) and its parsed sweep."""

    override: Override

    @property
    def key(self) -> str:
        """The override's key element, as the job's override is written (`+loss.x`, `loss`)."""
        return self.override.get_key_element()

    @property
    def name(self) -> str:
        """The parameter's name in the study (the key without `+`)."""
        return self.key.lstrip("+")

    @property
    def is_list(self) -> bool:
        """A list of values (choice, plain list, range): a grid can walk it."""
        return isinstance(self.override.value(), ChoiceSweep | RangeSweep)

    def texts(self) -> list[str]:
        """The override text of each value of a list, as Hydra writes them for `-m`."""
        return list(self.override.sweep_string_iterator())

    def choices(self) -> list[Any]:
        """The values of a list as Optuna holds them: plain values as they are, others as text."""
        values = list(self.override.sweep_iterator())
        return [v if isinstance(v, _PLAIN) else t for v, t in zip(values, self.texts(), strict=True)]

    def distribution(self) -> Any:
        """The Optuna distribution a search draws this parameter from."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        sweep = self.override.value()
        if isinstance(sweep, IntervalSweep):
            log = "log" in sweep.tags
            if "int" in sweep.tags:
                return IntDistribution(int(sweep.start), int(sweep.end), log=log)
            return FloatDistribution(float(sweep.start), float(sweep.end), log=log)
        values = self.choices()
        if isinstance(sweep, RangeSweep) and all(type(v) is int for v in values) and len(values) > 1:
            return IntDistribution(values[0], values[-1], step=values[1] - values[0])
        return CategoricalDistribution(values)

    def assignment(self, value: Any) -> str:
        """The job's override for one value this parameter took (`key=text`)."""
        if self.is_list:
            for choice, text in zip(self.choices(), self.texts(), strict=True):
                if type(choice) is type(value) and choice == value:
                    return f"{self.key}={text}"
        return f"{self.key}={format_value(value)}"


def format_value(value: Any) -> str:
    """A drawn number as override text Hydra parses back to the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def check_parameter(param: Parameter, search: bool) -> None:
    """Refuse what the driver cannot walk: glob() anywhere, interval() in a grid."""
    kind = param.override.value_type.name if param.override.value_type else "?"
    if kind == "GLOB_CHOICE_SWEEP":
        raise UserError(f"{param.override.input_line}: glob() sweeps are not supported by src/sweep.py")
    if not search and not param.is_list:
        raise UserError(
            f"{param.override.input_line}: interval() needs a search, not a grid: add sweep=optuna "
            "(or an hparams_search preset)"
        )


def with_config_params(overrides: list[Override], config_params: Mapping[str, Any]) -> list[Override]:
    """The command's overrides after the sweeps of `sweep.params` (those whose key the command line
    does not set itself), so a job's overrides keep the command's order."""
    from_config = parse_overrides(f"{key}={value}" for key, value in config_params.items())
    for override in from_config:
        if not override.is_sweep_override():
            raise UserError(
                f"sweep.params.{override.key_or_group}: {override.input_line!r} is a single value, "
                "not a sweep (a list a,b, choice(), range() or interval())"
            )
    on_command_line = {o.key_or_group for o in overrides}
    return [o for o in from_config if o.key_or_group not in on_command_line] + overrides
