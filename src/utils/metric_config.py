"""Hydra glue of the metric set: `metrics=[miou,boundary_iou,...]` -> a checked MetricSet.

conf/metrics/ is a config group selected as a list; each file holds one entry, `<name>: {_target_,
options}`, so the composed `metrics` node maps names to metric configs and `metrics.<name>.<option>=`
overrides an option. A user's own metric joins with `'+metrics.mine={_target_: mypkg.MyMetric}'`.
Everything here runs before any model is built: a misspelt name or a bad option costs a second.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from src.utils.errors import UserError

GROUP = "metrics"
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def metric_choices(conf_dir: Path = CONF_DIR) -> list[str]:
    """The names `metrics=[...]` accepts: the files of conf/metrics/."""
    return sorted(path.stem for path in (conf_dir / GROUP).glob("*.yaml"))


def _selected_names(value: Any) -> Iterable[str]:
    """Names in an override's value: `a`, `[a,b]`, or a sweep over either."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _selected_names(item)


def check_metric_names(arguments: Sequence[str], conf_dir: Path = CONF_DIR) -> None:
    """Raise naming `metrics` and its choices when a command line selects a metric that has no config.

    Hydra reports a missing member of a list selection as "Could not load 'metrics/x'" without the
    choices; this check runs on the command line before Hydra composes it.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    candidates = [arg for arg in arguments if arg.lstrip("+~").split("=", 1)[0] == GROUP]
    if not candidates:
        return
    choices = metric_choices(conf_dir)
    for override in OverridesParser.create().parse_overrides(candidates):
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        unknown = sorted({name for name in _selected_names(values) if name not in choices})
        if unknown:
            raise UserError(
                f"{override.input_line}: no metric named {', '.join(unknown)}; "
                f"choices (conf/metrics/): {', '.join(choices)}"
            )


def build_metric(name: str, spec: Any, shared: Mapping[str, Any]) -> Any:
    """`metrics.<name>` -> the metric; errors name `metrics.<name>` (and the option, for a bad value)."""
    from src.metrics import MetricConfigError, SegmentationMetric
    from src.utils.instantiate import instantiate_part

    if not isinstance(spec, Mapping) or "_target_" not in spec:
        raise UserError(f"{GROUP}.{name} must be a metric config with a _target_, got {spec!r}")
    target = str(spec["_target_"])
    metric = instantiate_part(f"{GROUP}.{name}", spec, shared, MetricConfigError, UserError)
    if not isinstance(metric, SegmentationMetric):
        raise UserError(
            f"{GROUP}.{name}: {target} is not a src.metrics.SegmentationMetric (see docs/evaluation.md)"
        )
    return metric


def build_metrics(
    metrics_cfg: Mapping[str, Any] | None,
    num_classes: int,
    ignore_index: int,
    always: Mapping[str, Any] | None = None,
) -> Any:
    """The MetricSet of `metrics.*` (entries set to null left out), plus the `always` configs, listed
    or not (null does not leave one of them out: its caller reads its results).

    The confusion-matrix family must be among them: checkpoints and val/mIoU_best follow mIoU.
    """
    from omegaconf import OmegaConf

    from src.metrics import MetricSet, SegmentationMetrics

    if OmegaConf.is_config(metrics_cfg):
        specs = OmegaConf.to_container(metrics_cfg, resolve=True)
    else:
        specs = dict(metrics_cfg or {})
    chosen = [name for name, spec in specs.items() if spec is not None]
    for name, spec in (always or {}).items():
        if specs.get(name) is None:
            specs[name] = spec
    # what every metric may take from the data config (each receives those its signature names)
    shared = {"num_classes": int(num_classes), "ignore_index": int(ignore_index)}
    metrics = {name: build_metric(name, spec, shared) for name, spec in specs.items() if spec is not None}
    if not any(isinstance(metric, SegmentationMetrics) for metric in metrics.values()):
        raise UserError(
            f"{GROUP}=[{','.join(chosen)}] leaves out miou: the mIoU family is always reported "
            f"(checkpoints follow val/mIoU); add it: {GROUP}=[{','.join(['miou', *chosen])}]"
        )
    try:
        return MetricSet(metrics)
    except ValueError as err:
        raise UserError(f"{GROUP}: {err}") from None
