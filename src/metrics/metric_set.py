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
        self.last_results: dict[str, dict[str, Any]] = {}
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
        for metric in self.metrics.values():
            self._update(metric, given)

    def update_padded(
        self,
        pred: Tensor,
        target: Tensor,
        sizes: Sequence[Sequence[int]] | None = None,
        probs: Tensor | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        """Add a batch padded bottom/right with ignore_index, `sizes` holding each image's own (H, W).

        Padding-safe metrics take the batch in one update; the others each image cropped to its size.
        Without `sizes` the batch's images are taken as whole.
        """
        # (torchmetrics' Metric overloads ==, so `metric in a_list` would not test identity)
        whole = [m for m in self.metrics.values() if sizes is None or m.padding_safe]
        cropped = [m for m in self.metrics.values() if sizes is not None and not m.padding_safe]
        given = {"pred": pred, "target": target, "probs": probs, "names": names}
        for metric in whole:
            self._update(metric, given)
        for index, (height, width) in enumerate(sizes if cropped else ()):
            image = {
                "pred": pred[index : index + 1, :height, :width],
                "target": target[index : index + 1, :height, :width],
                "probs": None if probs is None else probs[index : index + 1, :, :height, :width],
                "names": None if names is None else names[index : index + 1],
            }
            for metric in cropped:
                self._update(metric, image)

    def _update(self, metric: SegmentationMetric, given: Mapping[str, Any]) -> None:
        missing = [kind for kind in metric.inputs if given[kind] is None]
        if missing:
            name = next(key for key, value in self.metrics.items() if value is metric)
            raise ValueError(f"metric {name} needs {missing}, which this update did not pass")
        metric.update(**{kind: given[kind] for kind in metric.inputs})

    def compute(self) -> dict[str, dict[str, Any]]:
        """Each metric's results (synchronised across processes), under its name; kept as `last_results`."""
        self.last_results = {name: metric.compute() for name, metric in self.metrics.items()}
        return self.last_results

    def last(self, kind: type[SegmentationMetric]) -> dict[str, Any] | None:
        """The latest results of the first metric of class `kind` (None: not in the set or not computed)."""
        for name, metric in self.metrics.items():
            if isinstance(metric, kind):
                return self.last_results.get(name)
        return None

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
