"""Tversky loss (Salehi et al. 2017) and its focal form (Abraham & Khan 2019) over the batch's valid pixels.

With `p = softmax(logits)`, per class `c` over the batch's valid pixels: soft `tp = sum p_c [y=c]`,
`fp = sum p_c [y!=c]`, `fn = sum (1-p_c) [y=c]`, and the Tversky index
`TI_c = (tp + s) / (tp + alpha fp + beta fn + s)`;
`loss = sum_{c in K} w_c (1 - TI_c)^gamma / sum_{c in K} w_c` over K = the classes present in the
batch's valid targets (`present`) or all of them (`all`), and 0 when no pixel is valid.
`alpha = beta = 0.5` is the Dice (F1) loss with twice the smoothing; `beta > alpha` weighs missed
pixels more than false alarms (the paper's 0.3/0.7 favours recall on small structures).

Abraham & Khan write the focal exponent as `1/gamma` with their gamma in [1, 3]; here `gamma` is
the exponent itself, so their gamma = 4/3 is `gamma=0.75`. For gamma < 1 the gradient of
`(1 - TI)^gamma` is infinite at TI = 1, the loss's minimum; it is taken as 0 there.
As in dice.py, `fp = P_c - tp` and `fn = n_c - tp` (`P_c = sum p_c`, `n_c` = valid pixels of c),
so no one-hot tensor is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from src.losses.common import (
    CLASS_MODES,
    LossConfigError,
    PixelLoss,
    check_at_least,
    check_choice,
    flatten_pixels,
    present_class_weights,
    safe_div,
)
from src.losses.dice import soft_true_positives
from src.losses.focal import modulating_factor
from src.losses.fused.terms import TverskyTerm


def tversky_index(
    tp: Tensor, prob_sum: Tensor, counts: Tensor, alpha: float, beta: float, smooth: float
) -> Tensor:
    """`TI_c` per class from `tp`, `P_c = sum p_c` and the valid counts `n_c` (0 where undefined)."""
    fp, fn = prob_sum - tp, counts - tp
    return safe_div(tp + smooth, tp + alpha * fp + beta * fn + smooth)


def tversky_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float = 0.3,
    beta: float = 0.7,
    gamma: float = 1.0,
    smooth: float = 1e-5,
    classes: str = "present",
    class_weights: Tensor | None = None,
    ignore_index: int = 255,
) -> Tensor:
    """(Focal) Tversky loss of logits `(N,C,*)` against mask `(N,*)`; 0 with no valid pixel."""
    check_choice("classes", classes, CLASS_MODES)
    pixels = flatten_pixels(logits, target, ignore_index, class_weights)
    tp, prob_sum = soft_true_positives(pixels, torch.softmax(pixels.logits, dim=1))
    index = tversky_index(tp, prob_sum, pixels.counts, alpha, beta, smooth)
    per_class = modulating_factor(1 - index, float(gamma))
    weights = present_class_weights(pixels.counts, pixels.class_weights, classes)
    return safe_div((weights * per_class).sum(), weights.sum()).to(pixels.logits.dtype)


class TverskyLoss(PixelLoss):
    """Module form of `tversky_loss`."""

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 1.0,
        smooth: float = 1e-5,
        classes: str = "present",
        ignore_index: int = 255,
        class_weights: Sequence[float] | Tensor | None = None,
    ) -> None:
        super().__init__(ignore_index, class_weights)
        self.alpha = check_at_least("alpha", alpha, 0.0)
        self.beta = check_at_least("beta", beta, 0.0)
        if self.alpha + self.beta == 0:  # TI would be 1 for every prediction: nothing to learn
            raise LossConfigError(f"beta={beta}: expected alpha + beta > 0 (alpha={alpha})")
        self.gamma = check_at_least("gamma", gamma, 0.0, strict=True)
        self.smooth = check_at_least("smooth", smooth, 0.0)
        self.classes = check_choice("classes", classes, CLASS_MODES)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the scalar loss."""
        return tversky_loss(
            logits,
            target,
            self.alpha,
            self.beta,
            self.gamma,
            self.smooth,
            self.classes,
            self.class_weights,
            self.ignore_index,
        )

    def fused_term(self) -> TverskyTerm:
        """This term as the fused engine runs it."""
        return TverskyTerm(self.alpha, self.beta, self.gamma, self.smooth, self.classes)

    def extra_repr(self) -> str:
        """Show the Tversky parameters when the loss is printed."""
        return f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, classes={self.classes!r}"
