"""The loss built from the `loss` config group: `sum_k weight_k * L_k` over CE, BCE, focal, Dice.

All terms run in one pass of the fused engine (`functional.fused_terms`), so `log_softmax` is
computed once per chunk and shared. Term arguments arrive as Mappings (DictConfig or dict);
`class_weights` must already be a list: methods such as `auto` are resolved from the training
masks by `src.losses.class_weights.resolve_class_weights` before the loss is built.
"""

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from src.losses.bce import bce_term
from src.losses.ce import CETerm
from src.losses.dice import DiceTerm
from src.losses.focal import FocalTerm, as_alpha
from src.losses.functional import LossConfigError, Term, fused_terms

# Keys each term accepts, with the defaults used when a key is left out.
TERM_KEYS: dict[str, dict[str, object]] = {
    "ce": {"weight": 1.0},
    "bce": {"weight": 1.0},
    "focal": {"weight": 1.0, "gamma": 2.0, "alpha": None, "mode": "softmax"},
    "dice": {"weight": 1.0, "smooth": 1e-5, "beta": 1.0, "classes": "present"},
}


def _term_args(name: str, args: Mapping) -> dict[str, object]:
    """Defaults updated with `args`, rejecting keys the term does not know."""
    if not isinstance(args, Mapping):
        raise LossConfigError(f"loss.{name} must be a mapping of term options, got {args!r}")
    unknown = sorted(set(args) - set(TERM_KEYS[name]))
    if unknown:
        raise LossConfigError(
            f"loss.{name} has unknown key(s) {unknown}; expected {sorted(TERM_KEYS[name])}"
        )
    return {**TERM_KEYS[name], **dict(args)}


def build_term(name: str, args: Mapping, num_classes: int) -> tuple[float, Term]:
    """`(weight, term)` for the config section `loss.<name>`."""
    a = _term_args(name, args)
    if name == "ce":
        term: Term = CETerm()
    elif name == "bce":
        term = bce_term()
    elif name == "focal":
        alpha = as_alpha(a["alpha"])
        if isinstance(alpha, tuple) and len(alpha) != num_classes:
            raise LossConfigError(
                f"loss.focal.alpha has {len(alpha)} values, expected num_classes={num_classes}"
            )
        term = FocalTerm(float(a["gamma"]), alpha, str(a["mode"]))
    else:
        term = DiceTerm(float(a["smooth"]), float(a["beta"]), str(a["classes"]))
    return float(a["weight"]), term


def class_weight_tensor(class_weights: object, num_classes: int) -> Tensor | None:
    """Validate `loss.class_weights` (None or a list of num_classes floats) as a tensor."""
    if class_weights is None:
        return None
    if isinstance(class_weights, str):
        raise LossConfigError(
            f"loss.class_weights={class_weights!r} is a method that must be resolved from the "
            "training masks before the loss is built "
            "(src.losses.class_weights.resolve_class_weights); the loss only takes a list"
        )
    if not isinstance(class_weights, Sequence) and not hasattr(class_weights, "__iter__"):
        raise LossConfigError(
            f"loss.class_weights must be null, a list or a method, got {class_weights!r}"
        )
    values = [float(v) for v in class_weights]
    if len(values) != num_classes:
        raise LossConfigError(
            f"loss.class_weights has length {len(values)}, expected num_classes={num_classes}"
        )
    if any(v < 0 for v in values) or not any(v > 0 for v in values):
        raise LossConfigError(
            f"loss.class_weights must be >= 0 with at least one > 0, got {values}"
        )
    return torch.tensor(values, dtype=torch.float32)


class CompositeLoss(nn.Module):
    """Weighted sum of the configured terms; `last_terms` keeps each unweighted, detached value."""

    def __init__(
        self,
        ignore_index: int,
        num_classes: int,
        class_weights: Sequence[float] | str | None = None,
        ce: Mapping | None = None,
        bce: Mapping | None = None,
        focal: Mapping | None = None,
        dice: Mapping | None = None,
    ) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.num_classes = int(num_classes)
        # not persistent: checkpoints stay loadable whatever class weights a later run resolves
        weights = class_weight_tensor(class_weights, self.num_classes)
        self.register_buffer("class_weights", weights, persistent=False)
        sections = {"ce": ce, "bce": bce, "focal": focal, "dice": dice}
        built = {
            n: build_term(n, a, self.num_classes) for n, a in sections.items() if a is not None
        }
        if not built:
            raise LossConfigError(
                "the loss config enables no term: set at least one of ce, bce, focal, dice"
            )
        self.term_names: list[str] = list(built)
        self.term_weights: list[float] = [w for w, _ in built.values()]
        self.terms: list[Term] = [t for _, t in built.values()]
        self.last_terms: dict[str, Tensor] = {}

    def forward(self, logits: Tensor, mask: Tensor) -> Tensor:
        """Scalar loss of logits `(N,C,*)` against mask `(N,*)`; logits are resized if needed."""
        values = fused_terms(logits, mask, self.terms, self.class_weights, self.ignore_index)
        self.last_terms = {n: v.detach() for n, v in zip(self.term_names, values, strict=True)}
        weights = torch.tensor(self.term_weights, dtype=values.dtype, device=values.device)
        return (values * weights).sum()

    def extra_repr(self) -> str:
        """Show the terms and their weights when the model is printed."""
        parts = [f"{w} * {t}" for w, t in zip(self.term_weights, self.terms, strict=True)]
        return f"ignore_index={self.ignore_index}, " + " + ".join(parts)
