"""Binary cross-entropy on one-hot targets (pochih/FCN-pytorch's `BCEWithLogitsLoss`), ignoring pixels.

Exactly the sigmoid focal form with `gamma=0, alpha=None`: the sum over valid pixels and classes
of `w_c * BCE(logit_c, [y == c])`, divided by `(valid pixels) * sum_c w_c`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from src.losses.common import PixelLoss
from src.losses.focal import focal_loss
from src.losses.fused.terms import FocalTerm


def bce_loss(
    logits: Tensor, target: Tensor, class_weights: Tensor | None = None, ignore_index: int = 255
) -> Tensor:
    """One-vs-rest BCE of logits `(N,C,*)` against mask `(N,*)`; an all-ignored batch gives 0."""
    return focal_loss(logits, target, 0.0, None, class_weights, ignore_index, mode="sigmoid")


class BCELoss(PixelLoss):
    """Module form of `bce_loss`."""

    def __init__(
        self, ignore_index: int = 255, class_weights: Sequence[float] | Tensor | None = None
    ) -> None:
        super().__init__(ignore_index, class_weights)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the scalar loss."""
        return bce_loss(logits, target, self.class_weights, self.ignore_index)

    def fused_term(self) -> FocalTerm:
        """This term as the fused engine runs it."""
        return FocalTerm(gamma=0.0, alpha=None, mode="sigmoid")
