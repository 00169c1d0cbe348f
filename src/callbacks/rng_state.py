"""Lightning callback: the global RNG states travel in every checkpoint (exact resume)."""

from __future__ import annotations

from typing import Any

import lightning as L

from src.utils.rng import collect_rng_states, restore_rng_states


class RNGStateCheckpoint(L.Callback):
    """Saves the global RNG states in every checkpoint and restores them on resume.

    With them, a run resumed from an end-of-epoch `last.ckpt` draws the same shuffles, crops and
    dropout masks as the uninterrupted run (with `trainer.deterministic=true`: the same metrics).
    Under DDP rank 0's states are saved and restored on every rank; `seed_everything` gives all
    ranks the same seed, so their main-process streams are the same anyway.
    """

    def state_dict(self) -> dict[str, Any]:
        """The RNG states at the moment the checkpoint is written."""
        return collect_rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the RNG states (Lightning calls this before the first batch is fetched)."""
        restore_rng_states(state_dict)
