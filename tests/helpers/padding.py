"""Undoing `src.data.transforms.pad_collate` in tests: each sample back at its own size."""

from __future__ import annotations

import torch


def unpad(batch: torch.Tensor, sizes: torch.Tensor) -> list[torch.Tensor]:
    """Undo `pad_collate` on a (N, ..., H, W) tensor (a prediction, a mask): each sample at its size."""
    return [
        item[..., : int(h), : int(w)] for item, (h, w) in zip(batch, sizes.tolist(), strict=True)
    ]
