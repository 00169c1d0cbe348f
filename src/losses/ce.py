"""Cross-entropy: exactly `F.cross_entropy(logits, mask, weight=w, ignore_index=..., label_smoothing=eps)`.

`normalize=false` is Caffe's `normalize: false` (the FCN reference recipe): the sum of the per-pixel
losses over the valid pixels instead of their weighted mean.
`label_smoothing=eps` (Szegedy et al. 2016) trains against `(1 - eps) onehot(y) + eps / C`: per valid
pixel `(1 - eps) w_y (-log p_y) + eps / C sum_c w_c (-log p_c)`, and, as torch does, the mean
divides the whole sum by `sum w_y` of the true classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from src.losses.common import (
    PixelLoss,
    as_labels,
    check_between,
    check_inputs,
    class_counts,
    compute_dtype,
    resize_logits,
    safe_div,
)
from src.losses.fused.terms import CETerm


def ce_loss(
    logits: Tensor,
    target: Tensor,
    class_weights: Tensor | None = None,
    ignore_index: int = 255,
    normalize: bool = True,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross-entropy of logits `(N,C,*)` against mask `(N,*)`: mean `sum w_y (-log p_y) / sum w_y`
    (or the sum with `normalize=False`), smoothed as torch's; an all-ignored batch gives 0."""
    check_inputs(logits, target)
    target = as_labels(target)
    logits = resize_logits(logits, target.shape[1:])
    counts = class_counts(target, logits.shape[1], ignore_index)
    dtype = compute_dtype(logits)
    weight = None if class_weights is None else class_weights.to(logits.device, dtype)
    total = F.cross_entropy(
        logits.to(dtype),
        target,
        weight=weight,
        ignore_index=ignore_index,
        reduction="sum",
        label_smoothing=label_smoothing,
    )
    if not normalize:
        return total
    # torch's weighted mean divides by sum w_y; from integer counts it is exact, and 0 -> 0, not NaN
    weight_sum = counts.sum() if weight is None else (counts * weight.double()).sum()
    return safe_div(total, weight_sum.to(dtype))


class CELoss(PixelLoss):
    """Module form of `ce_loss`."""

    def __init__(
        self,
        ignore_index: int = 255,
        class_weights: Sequence[float] | Tensor | None = None,
        normalize: bool = True,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(ignore_index, class_weights)
        self.normalize = bool(normalize)
        self.label_smoothing = check_between("label_smoothing", label_smoothing, 0.0, 1.0)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the scalar loss."""
        return ce_loss(
            logits,
            target,
            self.class_weights,
            self.ignore_index,
            self.normalize,
            self.label_smoothing,
        )

    def fused_term(self) -> CETerm:
        """This term as the fused engine runs it."""
        return CETerm(normalize=self.normalize, label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        """Show the CE options when the loss is printed."""
        return f"normalize={self.normalize}, label_smoothing={self.label_smoothing}"
