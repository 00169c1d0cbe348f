"""The global RNG states (torch, CUDA, numpy, Python) as tensors and plain values, and back.

Lightning's checkpoints leave them out, so a resumed run would shuffle, augment and drop out
differently from the run it continues; `src/callbacks/rng_state.py` stores these in checkpoints.
Plain values only, so checkpoints still load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def collect_rng_states() -> dict[str, Any]:
    """The global RNG states as tensors and plain numbers."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # numpy's MT19937 key is a uint32 array: stored as int64 so no numpy object is pickled
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": int(version), "state": list(python_state), "gauss": gauss},
    }
    # Only the current device: under DDP each rank drives one GPU (and CUDA is not initialised
    # just to read a state on a CPU run).
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the global RNG states saved by `collect_rng_states`."""
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"].cpu())
    np_state = states["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py_state = states["python"]
    random.setstate((py_state["version"], tuple(py_state["state"]), py_state["gauss"]))
