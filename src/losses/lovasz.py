"""Lovasz-softmax loss (Berman et al. 2018): a convex surrogate of each class's Jaccard loss.

With `p = softmax(logits)` and, for a class `c` over a set of valid pixels, the errors
`m_i = |[y_i = c] - p_c,i|`: sort them in descending order, let `M_i` be the first `i` pixels of
that order and `F` the pixels of class c; the Jaccard loss of the set `M` of wrong pixels is
`Delta(M) = |M| / |F u M|`, and `loss_c = sum_i m_(i) (Delta(M_i) - Delta(M_{i-1}))`, the Lovasz
extension of Delta at the errors (the paper's Eq. 9 with Algorithm 1's gradient).
The value is `sum_{c in K} w_c loss_c / sum_{c in K} w_c` over K = the classes present in the set
(`present`) or all classes (`all`). `per_image=False` takes one set, every valid pixel of the
batch; `per_image=True` averages the per-image values over the images that have a valid pixel
(K taken per image). 0 when nothing is valid. Autograd follows the sorted errors, not the order
(the paper's subgradient). The paper's 'all' of an absent class is `max_i p_c,i`, as here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from src.losses.common import (
    CLASS_MODES,
    LossConfigError,
    PixelLoss,
    check_choice,
    flatten_pixels,
)


def jaccard_steps(sorted_fg: Tensor) -> Tensor:
    """`Delta(M_i) - Delta(M_{i-1})` for pixels in error order, `sorted_fg[i] = [pixel i in F]`, float64.

    `|F u M_i| = |F| + (background pixels among the first i)` grows only at background pixels, so
    a class pixel adds `1 / |F u M_i|` and a background pixel `|F \\ M_i| / (|F u M_i| (|F u M_i| - 1))`.
    Written this way from integer counts the steps carry no cancellation, unlike differences of
    Delta itself (which keep only a few digits in fp32 over a megapixel batch).
    """
    fg = sorted_fg.long()
    fg_total = fg.sum()
    union = (fg_total + (1 - fg).cumsum(0)).double()
    missed = (fg_total - fg.cumsum(0)).double()  # |F \ M_i|
    # a background pixel meets |F u M_i| = 1 only first in line with F empty: Delta goes 0 -> 1
    background = torch.where(union > 1, missed / (union * (union - 1)).clamp_min(1), 1.0)
    return torch.where(sorted_fg, 1 / union, background)


def lovasz_class_loss(prob: Tensor, fg: Tensor) -> Tensor:
    """`loss_c` of one class from `p_c` and `[y = c]` `(V,)`: sorted errors dotted with the Jaccard steps."""
    errors = (fg.to(prob.dtype) - prob).abs()
    sorted_errors, order = errors.sort(descending=True)
    return torch.dot(sorted_errors, jaccard_steps(fg[order]).to(errors.dtype))


def lovasz_softmax(
    probs: Tensor, labels: Tensor, class_weights: Tensor, classes: str = "present"
) -> Tensor:
    """Lovasz-softmax of one set of valid pixels: probabilities `(C, V)`, labels `(V,)`, weights `(C,)`."""
    num_classes = probs.shape[0]
    counts = torch.bincount(labels, minlength=num_classes).tolist()  # one host sync per set
    weights = class_weights.tolist()
    # a class of weight 0 adds nothing to either sum of the weighted mean: skip its sort
    ks = [c for c in range(num_classes) if weights[c] > 0 and (classes == "all" or counts[c] > 0)]
    if not ks or labels.numel() == 0:
        return probs.sum() * 0  # zero, with a (zero) gradient
    total = sum(weights[c] * lovasz_class_loss(probs[c], labels == c) for c in ks)
    return total / sum(weights[c] for c in ks)


def lovasz_loss(
    logits: Tensor,
    target: Tensor,
    per_image: bool = False,
    classes: str = "present",
    class_weights: Tensor | None = None,
    ignore_index: int = 255,
) -> Tensor:
    """Lovasz-softmax of logits `(N,C,*)` against mask `(N,*)` (module docstring); 0 with no valid pixel."""
    check_choice("classes", classes, CLASS_MODES)
    pixels = flatten_pixels(logits, target, ignore_index, class_weights)
    probs = torch.softmax(pixels.logits, dim=1).transpose(0, 1)  # (C, N, P)
    if not per_image:
        valid = pixels.valid
        return lovasz_softmax(probs[:, valid], pixels.labels[valid], pixels.class_weights, classes)
    values = [
        lovasz_softmax(probs[:, n, valid], pixels.labels[n, valid], pixels.class_weights, classes)
        for n, valid in enumerate(pixels.valid)
        if bool(valid.any())
    ]
    if not values:
        return probs.sum() * 0
    return torch.stack(values).mean()


class LovaszLoss(PixelLoss):
    """Module form of `lovasz_loss`; it has no fused form, so a composite holding it runs plain."""

    def __init__(
        self,
        per_image: bool = False,
        classes: str = "present",
        ignore_index: int = 255,
        class_weights: Sequence[float] | Tensor | None = None,
    ) -> None:
        super().__init__(ignore_index, class_weights)
        if not isinstance(per_image, bool):  # bool("false") is True: refuse anything but a bool
            raise LossConfigError(f"per_image={per_image!r}: expected true or false")
        self.per_image = per_image
        self.classes = check_choice("classes", classes, CLASS_MODES)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the scalar loss."""
        return lovasz_loss(
            logits, target, self.per_image, self.classes, self.class_weights, self.ignore_index
        )

    def extra_repr(self) -> str:
        """Show the Lovasz parameters when the loss is printed."""
        return f"per_image={self.per_image}, classes={self.classes!r}"
