"""Focal loss (Lin et al. 2017) in softmax form and in the one-vs-rest sigmoid form of seed 002.

Softmax: per valid pixel `w_y * a_y * (1 - p)^gamma * -log p` with `p` the softmax probability of
the true class (class weights are *not* folded into `p`, unlike seed 003), summed and divided by
`sum w_y`. Sigmoid (as `torchvision.ops.sigmoid_focal_loss`): per valid pixel and class
`w_c * a_t * (1 - q_t)^gamma * BCE(logit, [y == c])`, summed and divided by
`(valid pixels) * sum_c w_c`.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.losses.functional import (
    Batch,
    Chunk,
    GradParts,
    LossConfigError,
    Term,
    fused_terms,
    safe_div,
)

MODES = ("softmax", "sigmoid")


def focal_value(logp: Tensor, om: Tensor, gamma: float) -> Tensor:
    """`(1 - p)^gamma * -log p`, given `log p` and `om = 1 - p`."""
    if gamma == 0:
        return -logp
    return om.clamp_min(0).pow(gamma) * -logp


def focal_dlogp(logp: Tensor, om: Tensor, gamma: float) -> Tensor:
    """Derivative of `focal_value` with respect to `log p`, given `log p` and `om = 1 - p`."""
    if gamma == 0:
        return torch.full_like(logp, -1.0)
    # d/dl [-(1 - e^l)^g l] = -(1 - p)^g + g p l (1 - p)^(g - 1); the second part tends to 0
    # as p -> 1 but is 0 * inf there in floating point for gamma < 1, so it is masked.
    om = om.clamp_min(0)
    if gamma >= 1:
        return gamma * (1 - om) * logp * om.pow(gamma - 1) - om.pow(gamma)
    safe = torch.where(om > 0, om, 1.0)
    tail = torch.where(om > 0, gamma * (1 - om) * logp * safe.pow(gamma - 1), 0.0)
    return tail - om.pow(gamma)


def as_alpha(alpha: float | Sequence[float] | None) -> tuple[float, ...] | float | None:
    """Config alpha (null, scalar or list) as None, a float or a tuple of floats."""
    if alpha is None or isinstance(alpha, int | float):
        return None if alpha is None else float(alpha)
    return tuple(float(a) for a in alpha)


@dataclass(frozen=True)
class FocalTerm(Term):
    """Focal term; `alpha` is None (1), a scalar or a per-class tuple."""

    gamma: float = 2.0
    alpha: float | tuple[float, ...] | None = None
    mode: str = "softmax"
    name: str = "focal"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise LossConfigError(f"loss.focal.mode must be one of {MODES}, got {self.mode!r}")
        if self.gamma < 0:
            raise LossConfigError(f"loss.focal.gamma must be >= 0, got {self.gamma}")

    def _alpha(self, batch: Batch, num_classes: int) -> Tensor | None:
        if self.alpha is None:
            return None
        values = self.alpha if isinstance(self.alpha, tuple) else (self.alpha,) * num_classes
        if len(values) != num_classes:
            raise LossConfigError(
                f"loss.focal.alpha has {len(values)} values, expected one per class ({num_classes})"
            )
        return batch.per_class(values)

    def _softmax_weight(self, ch: Chunk) -> Tensor:
        alpha = self._alpha(ch.batch, ch.x.shape[1])
        return ch.weight_true if alpha is None else ch.weight_true * alpha.take(ch.y)

    def _sigmoid_parts(self, ch: Chunk) -> tuple[Tensor, Tensor]:
        """Signed logit `u` (so that q_t = sigmoid(u)) and `w_c * a_t`, zero at ignored pixels."""
        u = torch.where(ch.onehot, ch.x, -ch.x)
        c = ch.x.shape[1]
        wt = ch.vf.unsqueeze(1)
        if not ch.batch.uniform:
            wt = ch.batch.weight.view(1, c, 1) * wt
        alpha = self._alpha(ch.batch, c)
        if alpha is not None:
            a = alpha.view(1, c, 1)
            wt = wt * torch.where(ch.onehot, a, 1 - a)
        return u, wt

    def chunk_stats(self, ch: Chunk) -> Tensor:
        """Sum of the unnormalised focal terms over the chunk's valid pixels."""
        if self.mode == "softmax":
            f = focal_value(ch.logp_true, 1 - ch.p_true, self.gamma)
            return torch.dot(self._softmax_weight(ch).reshape(-1), f.reshape(-1)).reshape(1)
        u, wt = self._sigmoid_parts(ch)
        f = focal_value(F.logsigmoid(u), torch.sigmoid(-u), self.gamma)
        return (wt * f).sum().reshape(1)

    def _norm(self, batch: Batch) -> Tensor:
        if self.mode == "softmax":
            return batch.weight_sum_valid
        return batch.num_valid * batch.weight.double().sum()

    def value(self, stats: Tensor, batch: Batch) -> Tensor:
        """Normalise the sum (see the module docstring)."""
        return safe_div(stats[0], self._norm(batch))

    def chunk_grad(self, ch: Chunk, stats: Tensor, grad_out: Tensor, parts: GradParts) -> None:
        """Softmax: a coefficient on log p_y; sigmoid: an element-wise logit gradient."""
        scale = safe_div(grad_out, self._norm(ch.batch)).to(ch.x.dtype)
        if self.mode == "softmax":
            dlogp = focal_dlogp(ch.logp_true, 1 - ch.p_true, self.gamma)
            k = self._softmax_weight(ch) * dlogp
            parts.add_k(scale * k)
            return
        u, wt = self._sigmoid_parts(ch)
        # d log sigmoid(u) / du = sigmoid(-u); du / dx = +1 on the true class, -1 elsewhere
        om = torch.sigmoid(-u)  # 1 - q_t, exact where q_t is close to 1
        g = scale * wt * focal_dlogp(F.logsigmoid(u), om, self.gamma) * om
        parts.add_direct(torch.where(ch.onehot, g, -g))


def focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: float | Sequence[float] | None = None,
    weight: Tensor | None = None,
    ignore_index: int = 255,
    mode: str = "softmax",
) -> Tensor:
    """Focal loss of logits `(N,C,*)` against mask `(N,*)`; `gamma=0, alpha=None` is CE."""
    term = FocalTerm(float(gamma), as_alpha(alpha), mode)
    return fused_terms(logits, target, [term], weight, ignore_index)[0]


class FocalLoss(nn.Module):
    """Module form of `focal_loss`."""

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | None = None,
        mode: str = "softmax",
        ignore_index: int = 255,
        weight: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.term = FocalTerm(float(gamma), as_alpha(alpha), mode)
        self.ignore_index = ignore_index
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the scalar loss."""
        return fused_terms(logits, target, [self.term], self.weight, self.ignore_index)[0]
