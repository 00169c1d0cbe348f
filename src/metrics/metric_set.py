"""The configured metrics as one object: one update call feeds each metric the inputs it reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from src.metrics.common import INPUTS, SegmentationMetric


class MetricSet(nn.Module):
    """Named metrics (the config's names); `update` passes each the inputs in its `inputs`."""

    def __init__(self, metrics: Mapping[str, SegmentationMetric]) -> None:
        super().__init__()
        self.metrics = nn.ModuleDict(dict(metrics))
        for name, metric in self.metrics.items():
            unknown = set(metric.inputs) - set(INPUTS)
            if unknown:
                raise ValueError(
                    f"metric {name} reads {sorted(unknown)}; a metric may read {list(INPUTS)}"
                )

    def needs(self, kind: str) -> bool:
        """Whether any metric reads input `kind` (callers skip computing what nobody reads)."""
        return any(kind in metric.inputs for metric in self.metrics.values())

    def update(
        self,
        pred: Tensor,
        target: Tensor,
        probs: Tensor | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        """Add whole (unpadded) images of one size to every metric."""
        given = {"pred": pred, "target": target, "probs": probs, "names": names}
        for name, metric in self.metrics.items():
            missing = [kind for kind in metric.inputs if given[kind] is None]
            if missing:
                raise ValueError(f"metric {name} needs {missing}, which this update did not pass")
            metric.update(**{kind: given[kind] for kind in metric.inputs})

    def compute(self) -> dict[str, dict[str, Any]]:
        """Each metric's results (synchronised across processes), under its name."""
        return {name: metric.compute() for name, metric in self.metrics.items()}

    def reset(self) -> None:
        """Zero every metric's state."""
        for metric in self.metrics.values():
            metric.reset()

    def scalars(
        self, results: Mapping[str, Mapping[str, Any]], class_names: Sequence[str]
    ) -> dict[str, Tensor]:
        """Every metric's loggable values in one dict (`mIoU`, `IoU/<class>`, `mBIoU`, ...)."""
        flat: dict[str, Tensor] = {}
        owner: dict[str, str] = {}
        for name, metric in self.metrics.items():
            for key, value in metric.scalars(dict(results[name]), class_names).items():
                if key in flat:
                    raise ValueError(f"metrics {owner[key]} and {name} both report {key}")
                flat[key], owner[key] = value, name
        return flat
