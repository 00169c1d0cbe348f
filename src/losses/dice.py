"""Dice loss in the F-beta form of seed 003, with ignored pixels counted nowhere.

With `p = softmax(logits)`, per class `c` over the batch's valid pixels: `tp = sum p_c [y=c]`,
`fp = sum p_c [y!=c]`, `fn = sum (1-p_c) [y=c]`, and
`score_c = ((1+b^2) tp + s) / ((1+b^2) tp + b^2 fn + fp + s)`;
`loss = 1 - sum_{c in K} w_c score_c / sum_{c in K} w_c`. Since `fp = P_c - tp` (`P_c = sum p_c`)
and `fn = n_c - tp` (`n_c` = valid pixels of class c), the denominator is `b^2 n_c + P_c + s`:
the engine only gathers `tp` and `P_c` per chunk and counts `n_c` with a bincount, so no
one-hot tensor is ever built (the seed's one-hot also counted ignored pixels as false positives).
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from src.losses.functional import Batch, Chunk, GradParts, LossConfigError, Term, fused_terms

CLASS_MODES = ("present", "all")


@dataclass(frozen=True)
class DiceTerm(Term):
    """F-beta Dice over classes K: those present in the batch's valid targets, or all."""

    smooth: float = 1e-5
    beta: float = 1.0
    classes: str = "present"
    name: str = "dice"

    def __post_init__(self) -> None:
        if self.classes not in CLASS_MODES:
            raise LossConfigError(
                f"loss.dice.classes must be one of {CLASS_MODES}, got {self.classes!r}"
            )
        if self.smooth < 0 or self.beta <= 0:
            raise LossConfigError(
                f"loss.dice needs smooth >= 0 and beta > 0, got smooth={self.smooth}, beta={self.beta}"
            )

    def chunk_stats(self, ch: Chunk) -> Tensor:
        """`tp` and `P` per class, concatenated `(2C,)`."""
        vf = ch.valid.to(ch.x.dtype)
        tp = torch.zeros(ch.x.shape[1], dtype=ch.x.dtype, device=ch.x.device)
        tp.index_add_(0, ch.y.reshape(-1), (ch.p_true * vf).reshape(-1))
        return torch.cat([tp, torch.einsum("bcl,bl->c", ch.p, vf)])

    def _parts(self, stats: Tensor, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Numerator, denominator, class weights restricted to K, and their sum (float64)."""
        tp, prob_sum = stats.chunk(2)
        b2 = self.beta**2
        num = (1 + b2) * tp + self.smooth
        den = b2 * batch.counts + prob_sum + self.smooth
        wk = batch.weight.double()
        if self.classes == "present":
            wk = wk * (batch.counts > 0)
        wk_sum = torch.where(batch.num_valid > 0, wk.sum(), 0.0)
        return num, den, wk, wk_sum

    def value(self, stats: Tensor, batch: Batch) -> Tensor:
        """`1 - weighted mean score over K`; exactly 0 when no pixel is valid."""
        num, den, wk, wk_sum = self._parts(stats, batch)
        score = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)
        safe = torch.where(wk_sum > 0, wk_sum, 1.0)
        return torch.where(wk_sum > 0, 1 - (wk * score).sum() / safe, 0.0)

    def chunk_grad(self, ch: Chunk, stats: Tensor, grad_out: Tensor, parts: GradParts) -> None:
        """Coefficients on `P_c` (every valid pixel) and on `tp` (the true class)."""
        num, den, wk, wk_sum = self._parts(stats, ch.batch)
        safe_den = torch.where(den > 0, den, 1.0)
        scale = torch.where(wk_sum > 0, grad_out / torch.where(wk_sum > 0, wk_sum, 1.0), 0.0)
        d_tp = -scale * wk * (1 + self.beta**2) / safe_den
        d_prob = scale * wk * num / safe_den**2
        parts.add_ab(d_prob.to(ch.x.dtype), d_tp.to(ch.x.dtype))


def dice_loss(
    logits: Tensor,
    target: Tensor,
    smooth: float = 1e-5,
    beta: float = 1.0,
    classes: str = "present",
    weight: Tensor | None = None,
    ignore_index: int = 255,
) -> Tensor:
    """F-beta Dice loss of logits `(N,C,*)` against mask `(N,*)`; 0 with no valid pixel."""
    term = DiceTerm(float(smooth), float(beta), classes)
    return fused_terms(logits, target, [term], weight, ignore_index)[0]


class DiceLoss(nn.Module):
    """Module form of `dice_loss`."""

    def __init__(
        self,
        smooth: float = 1e-5,
        beta: float = 1.0,
        classes: str = "present",
        ignore_index: int = 255,
        weight: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.term = DiceTerm(float(smooth), float(beta), classes)
        self.ignore_index = ignore_index
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the scalar loss."""
        return fused_terms(logits, target, [self.term], self.weight, self.ignore_index)[0]
