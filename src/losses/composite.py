"""The loss a run trains with: `sum_k weight_k * term_k(logits, mask)` over named terms.

A term is any `nn.Module` called as `term(logits, mask)`. When every term has a fused form
(`fused_term()`) and shares the composite's `ignore_index` and class weights, `fused="auto"` runs
them all in one pass of the fused engine (src/losses/fused), which gives the same values and
gradients with a fraction of the memory; `fused="false"` always runs the plain modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from src.losses.common import (
    LossConfigError,
    as_class_weights,
    as_labels,
    check_choice,
    check_inputs,
    resize_logits,
)
from src.losses.fused import FusedTerm, fused_terms

FUSED_CHOICES = ("auto", "true", "false")


def _fused_choice(fused: bool | str) -> str:
    """`loss.fused` as one of auto | true | false (YAML may give a bool)."""
    value = str(fused).lower() if isinstance(fused, bool) else str(fused)
    return check_choice("loss.fused", value, FUSED_CHOICES)


class CompositeLoss(nn.Module):
    """Weighted sum of named terms; `last_terms` keeps each unweighted, detached value for logging."""

    def __init__(
        self,
        terms: Mapping[str, nn.Module],
        weights: Mapping[str, float],
        ignore_index: int = 255,
        class_weights: Sequence[float] | Tensor | None = None,
        fused: bool | str = "auto",
    ) -> None:
        super().__init__()
        if not terms:
            raise LossConfigError("the loss config enables no term: add at least one, e.g. loss.ce")
        if set(weights) != set(terms):
            raise ValueError(f"weights for {sorted(weights)} but terms {sorted(terms)}")
        self.terms = nn.ModuleDict(terms)
        self.term_names: list[str] = list(terms)
        self.term_weights: list[float] = [float(weights[name]) for name in self.term_names]
        self.ignore_index = int(ignore_index)
        self.register_buffer("class_weights", as_class_weights(class_weights), persistent=False)
        self.fused_forms = self._fused_forms(_fused_choice(fused))
        self.last_terms: dict[str, Tensor] = {}

    def _fused_forms(self, choice: str) -> list[FusedTerm] | None:
        """The terms' fused forms when the fused engine is chosen, else None."""
        if choice == "false":
            return None
        missing = [name for name in self.term_names if not self._fusable(self.terms[name])]
        if missing and choice == "true":
            raise LossConfigError(
                f"loss.fused=true but term(s) {missing} have no fused form with the composite's "
                "ignore_index and class weights; use loss.fused=auto (the plain path) or false"
            )
        if missing:
            return None
        return [self.terms[name].fused_term() for name in self.term_names]

    def _fusable(self, term: nn.Module) -> bool:
        """A term joins the fused pass only if it has a fused form and the composite's shared arguments."""
        if not callable(getattr(term, "fused_term", None)):
            return False
        if getattr(term, "ignore_index", self.ignore_index) != self.ignore_index:
            return False
        own, shared = getattr(term, "class_weights", None), self.class_weights
        if own is None or shared is None:
            return own is None and shared is None
        return torch.equal(own, shared)

    @property
    def is_fused(self) -> bool:
        """Whether forward runs the fused engine."""
        return self.fused_forms is not None

    def forward(self, logits: Tensor, mask: Tensor) -> Tensor:
        """Scalar loss of logits `(N,C,*)` against mask `(N,*)`; logits are resized to the mask first."""
        check_inputs(logits, mask)
        mask = as_labels(mask)  # every term, a user's own too, sees int64 labels
        logits = resize_logits(logits, mask.shape[1:])
        # every term sums in fp32 (terms upcast half logits); autocast would put reductions in bf16
        with torch.autocast(logits.device.type, enabled=False):
            if self.fused_forms is not None:
                values = fused_terms(
                    logits, mask, self.fused_forms, self.class_weights, self.ignore_index
                )
            else:
                values = torch.stack([self._plain_value(name, logits, mask) for name in self.term_names])
        self.last_terms = {n: v.detach() for n, v in zip(self.term_names, values, strict=True)}
        weights = torch.tensor(self.term_weights, dtype=values.dtype, device=values.device)
        return (values * weights).sum()

    def _plain_value(self, name: str, logits: Tensor, mask: Tensor) -> Tensor:
        value = self.terms[name](logits, mask)
        if not isinstance(value, Tensor) or value.dim() != 0:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"loss term {name!r} returned {shape}; a term must return a scalar tensor")
        return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value

    def extra_repr(self) -> str:
        """Show the weights and the path when the loss is printed."""
        parts = [f"{w} * {n}" for w, n in zip(self.term_weights, self.term_names, strict=True)]
        return f"{' + '.join(parts)}, ignore_index={self.ignore_index}, fused={self.is_fused}"
