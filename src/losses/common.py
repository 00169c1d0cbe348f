"""What every loss term shares: input checks, resizing, label validation and safe division.

Semantics fixed once for all terms: logits are `(N, C, *)` float, the mask `(N, *)` holds class
indices; pixels equal to `ignore_index` count nowhere; a batch with no valid pixel gives exactly 0
(and a zero gradient), never NaN. Terms compute in fp32 (fp64 for fp64 logits) whatever the
logits' dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.utils.errors import UserError

_INTERP_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}
CLASS_MODES = ("present", "all")
# What a mask may hold; every term reads it through `as_labels` (int64), whatever it came as.
MASK_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


class LossConfigError(UserError, ValueError):
    """A bad `loss.*` config value; the message names the key and what was expected.

    Terms raise it with the message starting at their argument's name (`gamma=-1: ...`), so the
    builder can prefix the config path (`loss.focal.`) without knowing the term.
    """


def resize_logits(logits: Tensor, size: Sequence[int]) -> Tensor:
    """Resize `(N,C,*)` logits to spatial `size` (bilinear/trilinear, align_corners=False)."""
    if tuple(logits.shape[2:]) == tuple(size):
        return logits
    mode = _INTERP_MODES.get(len(size))
    if mode is None:
        raise ValueError(f"cannot resize logits with {len(size)} spatial dims to {tuple(size)}")
    return F.interpolate(logits, size=tuple(size), mode=mode, align_corners=False)


def check_inputs(logits: Tensor, target: Tensor) -> None:
    """Raise ValueError unless logits are float `(N,C,*)` and target holds int labels `(N,*)`."""
    if not logits.is_floating_point() or logits.dim() < 2:
        raise ValueError(f"logits must be float (N,C,*), got {logits.dtype} {tuple(logits.shape)}")
    if target.dtype not in MASK_DTYPES:
        raise ValueError(
            f"mask must hold integer class indices ({', '.join(map(str, MASK_DTYPES))}), got {target.dtype}"
        )
    if target.dim() != logits.dim() - 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"mask shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}: "
            "expected logits (N,C,*) and mask (N,*)"
        )


def as_labels(target: Tensor) -> Tensor:
    """The mask as int64 class indices (no copy when it is int64 already).

    Comparing a uint8 mask with a Python int wraps the int to the mask's dtype (`mask == -1` is
    true at 255), so no term compares labels before this cast.
    """
    return target.long()


def class_counts(target: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """Valid pixels per class `(C,)` float64; raises ValueError for labels that are not classes."""
    target = as_labels(target)
    labels = torch.where(target == ignore_index, -1, target).reshape(-1)
    if labels.numel():
        low, high = (int(v) for v in torch.aminmax(labels))
        stray_minus_one = low == -1 and ignore_index != -1 and bool((target == -1).any())
        if low < -1 or high >= num_classes or stray_minus_one:
            bad = labels[(labels < -1) | (labels >= num_classes)]
            value = int(bad[0]) if bad.numel() else -1
            raise ValueError(
                f"mask holds label {value}, outside [0, {num_classes}) "
                f"and not ignore_index={ignore_index}"
            )
    return torch.bincount(labels + 1, minlength=num_classes + 1)[1:].double()


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """`num / den`, or exactly 0 where `den` is 0 (all-ignored batches must not give NaN)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)


def compute_dtype(logits: Tensor) -> torch.dtype:
    """fp64 for fp64 logits, fp32 otherwise: half-precision logits are summed in fp32."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


@dataclass
class Pixels:
    """A batch flattened to pixels: logits `(N,C,P)` in the compute dtype and what the terms need."""

    logits: Tensor  # (N, C, P)
    labels: Tensor  # (N, P) int64; ignored pixels hold 0 (masked by `valid`)
    valid: Tensor  # (N, P) bool
    counts: Tensor  # (C,) float64 valid pixels per class
    class_weights: Tensor  # (C,) in the compute dtype (ones when none are given)

    @property
    def valid_float(self) -> Tensor:
        """The valid mask as 0/1 in the compute dtype, `(N, P)`."""
        return self.valid.to(self.logits.dtype)

    def weight_of_true_class(self) -> Tensor:
        """`w_y` at valid pixels and 0 at ignored ones, `(N, P)`."""
        return self.class_weights[self.labels] * self.valid_float

    def onehot(self) -> Tensor:
        """Boolean `[y == c]`, `(N, C, P)` (False at ignored pixels only through `valid`)."""
        classes = torch.arange(self.logits.shape[1], device=self.logits.device).view(1, -1, 1)
        return self.labels.unsqueeze(1) == classes


def flatten_pixels(
    logits: Tensor, target: Tensor, ignore_index: int, class_weights: Tensor | None = None
) -> Pixels:
    """Check, resize to the mask, cast to the compute dtype and flatten the spatial dims."""
    check_inputs(logits, target)
    target = as_labels(target)
    logits = resize_logits(logits, target.shape[1:])
    num, classes = logits.shape[:2]
    dtype = compute_dtype(logits)
    counts = class_counts(target, classes, ignore_index)
    valid = (target != ignore_index).reshape(num, -1)
    labels = target.reshape(num, -1).masked_fill(~valid, 0)
    if class_weights is None:
        weights = torch.ones(classes, dtype=dtype, device=logits.device)
    else:
        if class_weights.numel() != classes:
            raise ValueError(
                f"class weight has {class_weights.numel()} values for {classes} classes"
            )
        weights = class_weights.to(logits.device, dtype)
    return Pixels(logits.to(dtype).reshape(num, classes, -1), labels, valid, counts, weights)


def as_class_weights(values: Sequence[float] | Tensor | None, num_classes: int | None = None) -> Tensor | None:
    """`loss.class_weights` (None or a list of num_classes floats >= 0, one > 0) as a float32 tensor."""
    if values is None:
        return None
    if isinstance(values, str):
        raise LossConfigError(
            f"loss.class_weights={values!r} is a method that must be resolved from the training "
            "masks before the loss is built (src.losses.class_weights.resolve_class_weights); "
            "the loss only takes a list"
        )
    if not hasattr(values, "__iter__"):
        raise LossConfigError(f"loss.class_weights must be null, a list or a method, got {values!r}")
    floats = [float(v) for v in values]
    if num_classes is not None and len(floats) != num_classes:
        raise LossConfigError(
            f"loss.class_weights has length {len(floats)}, expected num_classes={num_classes}"
        )
    if min(floats, default=0.0) < 0 or max(floats, default=0.0) <= 0:
        raise LossConfigError(f"loss.class_weights must be >= 0 with at least one > 0, got {floats}")
    return torch.tensor(floats, dtype=torch.float32)


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Return `value` if it is one of `choices`, else raise naming the argument."""
    if value not in choices:
        raise LossConfigError(f"{name}={value!r}: expected one of {list(choices)}")
    return value


def check_at_least(name: str, value: float, low: float, strict: bool = False) -> float:
    """Return `value` as a float if it is >= `low` (> with `strict`), else raise naming it."""
    value = float(value)
    if value < low or (strict and value == low):
        raise LossConfigError(f"{name}={value}: expected {'>' if strict else '>='} {low}")
    return value


def check_between(name: str, value: float, low: float, high: float) -> float:
    """Return `value` as a float if `low <= value <= high`, else raise naming the argument."""
    value = float(value)
    if not low <= value <= high:
        raise LossConfigError(f"{name}={value}: expected a value in [{low}, {high}]")
    return value


def present_class_weights(counts: Tensor, class_weights: Tensor, classes: str) -> Tensor:
    """The class weights restricted to K: classes with a valid target pixel (`present`) or all."""
    weights = class_weights.to(torch.float64)
    if classes == "present":
        weights = weights * (counts > 0)
    return torch.where(counts.sum() > 0, weights, torch.zeros_like(weights))


class PixelLoss(nn.Module):
    """Base of the shipped terms: `ignore_index` and the class weights (a buffer kept out of checkpoints).

    The buffer is not persistent, so checkpoints load whatever class weights a later run resolves.
    """

    def __init__(
        self, ignore_index: int = 255, class_weights: Sequence[float] | Tensor | None = None
    ) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.register_buffer("class_weights", as_class_weights(class_weights), persistent=False)
