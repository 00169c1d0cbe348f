"""Dice loss in F-beta form (batch-level tp/fp/fn), with ignored pixels counted nowhere.

With `p = softmax(logits)`, per class `c` over the batch's valid pixels: `tp = sum p_c [y=c]`,
`fp = sum p_c [y!=c]`, `fn = sum (1-p_c) [y=c]`, and
`score_c = ((1+b^2) tp + s) / ((1+b^2) tp + b^2 fn + fp + s)`;
`loss = 1 - sum_{c in K} w_c score_c / sum_{c in K} w_c` over K = the classes present in the
batch's valid targets (`present`) or all of them (`all`). Since `fp = P_c - tp` (`P_c = sum p_c`)
and `fn = n_c - tp` (`n_c` = valid pixels of class c), the denominator is `b^2 n_c + P_c + s`, so
no one-hot tensor is needed (the one-hot Dice this project started from also counted ignored
pixels as false positives).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from src.losses.common import (
    CLASS_MODES,
    PixelLoss,
    Pixels,
    check_at_least,
    check_choice,
    flatten_pixels,
    present_class_weights,
    safe_div,
)
from src.losses.fused.terms import DiceTerm


def soft_true_positives(pixels: Pixels, probs: Tensor) -> tuple[Tensor, Tensor]:
    """Per class `tp = sum p_c [y = c]` and `P_c = sum p_c` over the valid pixels, float64 `(C,)`."""
    valid = pixels.valid_float
    p_true = probs.gather(1, pixels.labels.unsqueeze(1)).squeeze(1) * valid
    classes = probs.shape[1]
    tp = torch.zeros(classes, dtype=probs.dtype, device=probs.device)
    tp = tp.index_add(0, pixels.labels.reshape(-1), p_true.reshape(-1))
    prob_sum = (probs * valid.unsqueeze(1)).sum(dim=(0, 2))
    return tp.double(), prob_sum.double()


def dice_loss(
    logits: Tensor,
    target: Tensor,
    smooth: float = 1e-5,
    beta: float = 1.0,
    classes: str = "present",
    class_weights: Tensor | None = None,
    ignore_index: int = 255,
) -> Tensor:
    """F-beta Dice loss of logits `(N,C,*)` against mask `(N,*)`; 0 with no valid pixel."""
    check_choice("classes", classes, CLASS_MODES)
    pixels = flatten_pixels(logits, target, ignore_index, class_weights)
    tp, prob_sum = soft_true_positives(pixels, torch.softmax(pixels.logits, dim=1))
    b2 = beta**2
    score = safe_div((1 + b2) * tp + smooth, b2 * pixels.counts + prob_sum + smooth)
    weights = present_class_weights(pixels.counts, pixels.class_weights, classes)
    weight_sum = weights.sum()
    loss = torch.where(weight_sum > 0, 1 - safe_div((weights * score).sum(), weight_sum), 0.0)
    return loss.to(pixels.logits.dtype)


class DiceLoss(PixelLoss):
    """Module form of `dice_loss`."""

    def __init__(
        self,
        smooth: float = 1e-5,
        beta: float = 1.0,
        classes: str = "present",
        ignore_index: int = 255,
        class_weights: Sequence[float] | Tensor | None = None,
    ) -> None:
        super().__init__(ignore_index, class_weights)
        self.smooth = check_at_least("smooth", smooth, 0.0)
        self.beta = check_at_least("beta", beta, 0.0, strict=True)
        self.classes = check_choice("classes", classes, CLASS_MODES)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the scalar loss."""
        return dice_loss(
            logits, target, self.smooth, self.beta, self.classes, self.class_weights, self.ignore_index
        )

    def fused_term(self) -> DiceTerm:
        """This term as the fused engine runs it."""
        return DiceTerm(self.smooth, self.beta, self.classes)
