"""Cross-entropy: exactly `F.cross_entropy(logits, mask, weight=w, ignore_index=ii)`."""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from src.losses.functional import Batch, Chunk, GradParts, Term, fused_terms, safe_div


@dataclass(frozen=True)
class CETerm(Term):
    """Weighted mean `sum w_y * -log p_y / sum w_y` over valid pixels (0 when there are none)."""

    name: str = "ce"

    def chunk_stats(self, ch: Chunk) -> Tensor:
        """Sum of `w_y * -log p_y` over the chunk's valid pixels."""
        return -torch.dot(ch.weight_true.reshape(-1), ch.logp_true.reshape(-1)).reshape(1)

    def value(self, stats: Tensor, batch: Batch) -> Tensor:
        """Divide by `sum w_y`, as torch's weighted mean does."""
        return safe_div(stats[0], batch.weight_sum_valid)

    def chunk_grad(self, ch: Chunk, stats: Tensor, grad_out: Tensor, parts: GradParts) -> None:
        """d/d log p_y = -w_y / sum w_y."""
        scale = safe_div(grad_out, ch.batch.weight_sum_valid).to(ch.x.dtype)
        parts.add_k(-scale * ch.weight_true)


def ce_loss(
    logits: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = 255
) -> Tensor:
    """Cross-entropy of logits `(N,C,*)` against mask `(N,*)`; an all-ignored batch gives 0."""
    return fused_terms(logits, target, [CETerm()], weight, ignore_index)[0]


class CELoss(nn.Module):
    """Module form of `ce_loss`."""

    def __init__(self, ignore_index: int = 255, weight: Tensor | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the scalar loss."""
        return ce_loss(logits, target, self.weight, self.ignore_index)
