"""Binary cross-entropy on one-hot targets (seed 004's `BCEWithLogitsLoss`), ignoring pixels.

Exactly the sigmoid focal form with `gamma=0, alpha=None`: the sum over valid pixels and classes
of `w_c * BCE(logit_c, [y == c])`, divided by `(valid pixels) * sum_c w_c`. The one-hot target is
built chunk by chunk inside the engine, never stored.
"""

from torch import Tensor, nn

from src.losses.focal import FocalTerm
from src.losses.functional import fused_terms


def bce_term() -> FocalTerm:
    """The BCE term as run by the engine (logged as `bce`)."""
    return FocalTerm(gamma=0.0, alpha=None, mode="sigmoid", name="bce")


def bce_loss(
    logits: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = 255
) -> Tensor:
    """One-vs-rest BCE of logits `(N,C,*)` against mask `(N,*)`; an all-ignored batch gives 0."""
    return fused_terms(logits, target, [bce_term()], weight, ignore_index)[0]


class BCELoss(nn.Module):
    """Module form of `bce_loss`."""

    def __init__(self, ignore_index: int = 255, weight: Tensor | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the scalar loss."""
        return bce_loss(logits, target, self.weight, self.ignore_index)
