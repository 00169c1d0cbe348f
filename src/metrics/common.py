"""What every metric of the set shares: the base class, option checks, NaN-aware division.

Semantics fixed once for all metrics: labels are int class indices, `ignore_index` pixels count
nowhere; a score whose denominator is empty is NaN, reported as undefined and left out of every
mean (never counted as 0 or 1). Every state is a sum, so it reduces across processes exactly (the
per-image table, a list of rows by nature, is gathered).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric

from src.utils.errors import UserError

# What a metric of the set may ask `MetricSet.update` for (see SegmentationMetric.inputs).
INPUTS = ("pred", "target", "probs", "names")


class MetricConfigError(UserError, ValueError):
    """A bad metric option; the message starts with the argument's name (`bins=0: ...`).

    The config builder prefixes the config path (`metrics.calibration.`) without knowing the metric.
    """


class SegmentationMetric(Metric):
    """A metric of the configurable set: summed states, and its results as named scalars.

    `update` takes whole images (no padding) of one size: `pred` and `target` (N, H, W) class
    indices, `probs` (N, C, H, W) softmax probabilities, `names` the images' names; `inputs` says
    which of them it reads, so callers compute probabilities only for a metric that asks.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True
    inputs: ClassVar[tuple[str, ...]] = ("pred", "target")
    # True when padding labelled ignore_index changes nothing (pixel counts): such a metric takes a
    # padded batch in one update; the others (boundaries, per-image rows) see each image at its size.
    padding_safe: ClassVar[bool] = False

    def scalars(self, scores: dict[str, Tensor], class_names: Sequence[str]) -> dict[str, Tensor]:
        """The values to log, named relative to the stage (`mBIoU`, `BIoU/<class>`)."""
        raise NotImplementedError


def nan_divide(num: Tensor, den: Tensor) -> Tensor:
    """num / den, NaN where den is 0 (an undefined score, not a zero one)."""
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.full_like(num, math.nan))


def per_class(prefix: str, values: Tensor, class_names: Sequence[str]) -> dict[str, Tensor]:
    """{`<prefix>/<class>`: value} for a (C,) tensor of per-class scores.

    torchmetrics squeezes one-element results of `compute` to 0-d, hence the reshape.
    """
    flat = values.reshape(-1)
    return {f"{prefix}/{name}": value for name, value in zip(class_names, flat, strict=True)}


def check_shapes(pred: Tensor, target: Tensor) -> None:
    """Raise unless pred and target have one shape."""
    if pred.shape != target.shape:
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}"
        )


def as_images(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Label maps of one shape as int64 (N, H, W) batches ((H, W) is one image)."""
    check_shapes(pred, target)
    if pred.dim() not in (2, 3):
        raise ValueError(f"expected (N, H, W) or (H, W) label maps, got shape {tuple(pred.shape)}")
    if pred.dim() == 2:
        pred, target = pred.unsqueeze(0), target.unsqueeze(0)
    return pred.long(), target.long()


def positive(
    name: str, value: float | None, allow_none: bool = False, allow_zero: bool = False
) -> float | None:
    """`value` as a float if it is a finite number > 0 (>= 0 with allow_zero; None when allowed), else
    MetricConfigError naming `name`."""
    if value is None and allow_none:
        return None
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value < 0 or (value == 0 and not allow_zero):
        expected = "a number >= 0" if allow_zero else "a positive number"
        raise MetricConfigError(f"{name}={value!r}: expected {expected}")
    return float(value)


def one_of(names: tuple[str, str], values: tuple[float | None, float | None]) -> None:
    """Raise unless exactly one of two alternative options is set (the other null)."""
    if (values[0] is None) == (values[1] is None):
        raise MetricConfigError(
            f"{names[0]}={values[0]!r} and {names[1]}={values[1]!r}: set exactly one of them "
            "(the other to null)"
        )
