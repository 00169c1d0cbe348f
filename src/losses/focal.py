"""Focal loss (Lin et al. 2017) in softmax form and in one-vs-rest sigmoid form.

Softmax: per valid pixel `w_y * a_y * (1 - p_y)^gamma * -log p_y` with `p` the softmax probability
of the true class (class weights are *not* folded into `p`, unlike the one-hot Focal + Dice
implementation this project started from), summed and divided by `sum w_y`; `gamma=0, alpha=None`
is exactly CE. Sigmoid (as `torchvision.ops.sigmoid_focal_loss`):
per valid pixel and class `w_c * a_t * (1 - q_t)^gamma * BCE(logit_c, [y == c])`, summed and divided
by `(valid pixels) * sum_c w_c`, where `a_t = alpha` on the true class and `1 - alpha` elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from src.losses.common import (
    LossConfigError,
    PixelLoss,
    Pixels,
    check_at_least,
    check_choice,
    flatten_pixels,
    safe_div,
)
from src.losses.fused.terms import FocalTerm

MODES = ("softmax", "sigmoid")
Alpha = float | tuple[float, ...] | None


def modulating_factor(one_minus_p: Tensor, gamma: float) -> Tensor:
    """`(1 - p)^gamma`, with a finite gradient where `1 - p` is 0 (it is 0 there for gamma > 0)."""
    if gamma == 0:
        return torch.ones_like(one_minus_p)
    positive = one_minus_p > 0
    # pow's gradient at 0 is inf for gamma < 1; the masked branch keeps it out of the graph
    base = torch.where(positive, one_minus_p, 1.0)
    return torch.where(positive, base.pow(gamma), 0.0)


def as_alpha(alpha: float | Sequence[float] | None, num_classes: int | None = None) -> Alpha:
    """Config alpha (null, scalar or a list of num_classes floats) as None, a float or a tuple."""
    if alpha is None or isinstance(alpha, int | float):
        return None if alpha is None else float(alpha)
    values = tuple(float(a) for a in alpha)
    if num_classes is not None and len(values) != num_classes:
        raise LossConfigError(
            f"alpha has {len(values)} values, expected num_classes={num_classes}"
        )
    return values


def _alpha_per_class(alpha: Alpha, pixels: Pixels) -> Tensor | None:
    if alpha is None:
        return None
    classes = pixels.logits.shape[1]
    values = alpha if isinstance(alpha, tuple) else (alpha,) * classes
    if len(values) != classes:
        raise LossConfigError(f"alpha has {len(values)} values, expected one per class ({classes})")
    return torch.tensor(values, dtype=pixels.logits.dtype, device=pixels.logits.device)


def _softmax_focal(pixels: Pixels, gamma: float, alpha: Alpha) -> Tensor:
    log_p = torch.log_softmax(pixels.logits, dim=1)
    log_p_true = log_p.gather(1, pixels.labels.unsqueeze(1)).squeeze(1)
    # -expm1(log p) is 1 - p without the cancellation of 1 - exp(log p) near p = 1
    per_pixel = modulating_factor(-torch.expm1(log_p_true), gamma) * -log_p_true
    weight = pixels.weight_of_true_class()
    normaliser = (pixels.counts * pixels.class_weights.double()).sum()
    alphas = _alpha_per_class(alpha, pixels)
    if alphas is not None:
        weight = weight * alphas[pixels.labels]
    return safe_div((weight * per_pixel).sum(), normaliser.to(per_pixel.dtype))


def _sigmoid_focal(pixels: Pixels, gamma: float, alpha: Alpha) -> Tensor:
    onehot = pixels.onehot()
    signed = torch.where(onehot, pixels.logits, -pixels.logits)  # q_t = sigmoid(signed)
    per_element = modulating_factor(torch.sigmoid(-signed), gamma) * -F.logsigmoid(signed)
    weight = pixels.valid_float.unsqueeze(1) * pixels.class_weights.view(1, -1, 1)
    alphas = _alpha_per_class(alpha, pixels)
    if alphas is not None:
        weight = weight * torch.where(onehot, alphas.view(1, -1, 1), 1 - alphas.view(1, -1, 1))
    normaliser = pixels.counts.sum() * pixels.class_weights.double().sum()
    return safe_div((weight * per_element).sum(), normaliser.to(per_element.dtype))


def focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: float | Sequence[float] | None = None,
    class_weights: Tensor | None = None,
    ignore_index: int = 255,
    mode: str = "softmax",
) -> Tensor:
    """Focal loss of logits `(N,C,*)` against mask `(N,*)` (module docstring); 0 with no valid pixel."""
    check_choice("mode", mode, MODES)
    pixels = flatten_pixels(logits, target, ignore_index, class_weights)
    compute = _softmax_focal if mode == "softmax" else _sigmoid_focal
    return compute(pixels, float(gamma), as_alpha(alpha))


class FocalLoss(PixelLoss):
    """Module form of `focal_loss`; `alpha` is null (1), a scalar or one value per class."""

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | None = None,
        mode: str = "softmax",
        ignore_index: int = 255,
        class_weights: Sequence[float] | Tensor | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(ignore_index, class_weights)
        self.gamma = check_at_least("gamma", gamma, 0.0)
        self.alpha = as_alpha(alpha, num_classes)
        self.mode = check_choice("mode", mode, MODES)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the scalar loss."""
        return focal_loss(
            logits, target, self.gamma, self.alpha, self.class_weights, self.ignore_index, self.mode
        )

    def fused_term(self) -> FocalTerm:
        """This term as the fused engine runs it."""
        return FocalTerm(self.gamma, self.alpha, self.mode)

    def extra_repr(self) -> str:
        """Show the focal parameters when the loss is printed."""
        return f"gamma={self.gamma}, alpha={self.alpha}, mode={self.mode!r}"
