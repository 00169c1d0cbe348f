"""Online hard example mining cross-entropy (Shrivastava et al. 2016) as mmseg's OHEM pixel sampler.

With `q` the softmax probabilities of the true class over the batch's `V` valid pixels, sorted
ascending, and `tau = max(thresh, q[min(min_kept * N, V - 1)])`, the kept pixels are those with
`p_y < tau`: every pixel the model is less sure of than `thresh`, and at least the
`min_kept * N` hardest of the batch (mmseg counts `min_kept` per image), or all but the most
confident one when the batch has no more valid pixels than that. The value is
`sum_kept w_y (-log p_y) / sum_kept w_y`, 0 when none is kept. The selection is made on detached
probabilities and carries no gradient: the gradient is CE's on the kept pixels.

Unlike mmseg, the sum is divided by the kept pixels' weights: mmseg's `OHEMPixelSampler` gives
the kept pixels a weight of 1 and its `CrossEntropyLoss` (`avg_non_ignore=False`) divides by
every pixel of the batch, ignored and unkept ones included, so its value shrinks with the number
of pixels kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from src.losses.common import LossConfigError, PixelLoss, check_between, flatten_pixels, safe_div


def hard_pixels(p_true: Tensor, valid: Tensor, thresh: float, min_kept: int) -> Tensor:
    """Boolean `(N,P)` mask of the kept pixels: valid with `p_y < tau` (module docstring)."""
    q = p_true[valid]
    if q.numel() == 0:
        return valid
    rank = min(min_kept * p_true.shape[0], q.numel() - 1)
    # q[rank] of the ascending order is the (rank + 1)-th smallest: no full sort needed
    tau = q.kthvalue(rank + 1).values.clamp_min(thresh)
    return valid & (p_true < tau)


def ohem_loss(
    logits: Tensor,
    target: Tensor,
    thresh: float = 0.7,
    min_kept: int = 100000,
    class_weights: Tensor | None = None,
    ignore_index: int = 255,
) -> Tensor:
    """OHEM cross-entropy of logits `(N,C,*)` against mask `(N,*)`; 0 when no pixel is kept."""
    pixels = flatten_pixels(logits, target, ignore_index, class_weights)
    log_p_true = torch.log_softmax(pixels.logits, dim=1).gather(1, pixels.labels.unsqueeze(1))
    log_p_true = log_p_true.squeeze(1)
    with torch.no_grad():
        kept = hard_pixels(log_p_true.exp(), pixels.valid, float(thresh), int(min_kept))
    weight = pixels.class_weights[pixels.labels] * kept
    # the normaliser from integer counts is exact, as in ce.py
    kept_counts = torch.bincount(pixels.labels[kept], minlength=pixels.logits.shape[1])
    normaliser = (kept_counts.double() * pixels.class_weights.double()).sum()
    return safe_div((weight * -log_p_true).sum(), normaliser.to(log_p_true.dtype))


def check_count(name: str, value: int) -> int:
    """Return `value` as an int if it is a whole number >= 0, else raise naming the argument."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or value < 0 or not float(value).is_integer():
        raise LossConfigError(f"{name}={value!r}: expected an integer >= 0")
    return int(value)


class OHEMLoss(PixelLoss):
    """Module form of `ohem_loss`; `min_kept` counts per image, as in mmseg."""

    def __init__(
        self,
        thresh: float = 0.7,
        min_kept: int = 100000,
        ignore_index: int = 255,
        class_weights: Sequence[float] | Tensor | None = None,
    ) -> None:
        super().__init__(ignore_index, class_weights)
        self.thresh = check_between("thresh", thresh, 0.0, 1.0)
        self.min_kept = check_count("min_kept", min_kept)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the scalar loss."""
        return ohem_loss(
            logits, target, self.thresh, self.min_kept, self.class_weights, self.ignore_index
        )

    def extra_repr(self) -> str:
        """Show the OHEM parameters when the loss is printed."""
        return f"thresh={self.thresh}, min_kept={self.min_kept}"
