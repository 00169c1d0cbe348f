"""Resume from last.ckpt continues the run exactly: same steps, same metrics, same RNG streams."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from src.train import train
from src.utils.rng import collect_rng_states, restore_rng_states

DETERMINISTIC = ("seed=7", "trainer.deterministic=true", "trainer.max_epochs=2")
# debug=smoke trains 3 batches per epoch: the fault lands on the last step of epoch 1 (of 2)
SIGTERM_AFTER_EPOCH_1 = (
    "+callbacks.fault._target_=tests.helpers.faults.FaultInjection",
    "+callbacks.fault.kind=sigterm",
    "+callbacks.fault.at_step=3",
)


def draws() -> tuple[float, float, float, float]:
    """One draw from each global RNG a training run uses."""
    return float(torch.rand(())), float(np.random.rand()), random.random(), float(torch.randn(()))


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    np.random.randn()  # leaves a cached Gaussian in numpy's state: it must round-trip too
    path = tmp_path / "rng.pt"
    torch.save(collect_rng_states(), path)
    expected = draws()
    draws()  # move every stream on
    restore_rng_states(torch.load(path, weights_only=True))
    assert draws() == expected


def run_dir(cfg, path: Path):
    """Point a composed config's outputs (checkpoints, metrics.json, events) at `path`."""
    with open_dict(cfg):
        cfg.paths.output_dir = str(path)
    return cfg


def comparable(metrics_file: Path) -> dict:
    """metrics.json without what legitimately differs between runs (wall time, provenance)."""
    summary = json.loads(metrics_file.read_text())
    return {key: summary[key] for key in ("best", "final", "global_step")}


@pytest.mark.slow
def test_run_interrupted_after_epoch_1_resumes_exactly(smoke_cfg, tmp_path: Path) -> None:
    full = run_dir(smoke_cfg(*DETERMINISTIC), tmp_path / "full")
    train(full)

    cut = run_dir(smoke_cfg(*DETERMINISTIC, *SIGTERM_AFTER_EPOCH_1), tmp_path / "cut")
    with pytest.raises(SystemExit) as stopped:
        train(cut)
    assert stopped.value.code == 143  # 128 + SIGTERM, as a shell reports a pre-empted job
    assert not (tmp_path / "cut" / "metrics.json").exists()
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert (state["global_step"], state["epoch"]) == (3, 1)  # epoch 1 fully trained and validated

    resumed = run_dir(smoke_cfg(*DETERMINISTIC, f"ckpt_path={last}"), tmp_path / "resumed")
    train(resumed)

    reference = comparable(tmp_path / "full" / "metrics.json")
    assert reference["global_step"] == 6
    assert reference["final"]["epoch"] == 1
    assert comparable(tmp_path / "resumed" / "metrics.json") == reference


@pytest.mark.slow
def test_amp_grad_scaler_state_is_restored(smoke_cfg, tmp_path: Path) -> None:
    # A CPU GradScaler whose scale doubles after every finite step: after 3 + 3 steps it is
    # 2**6 if the resumed run continued from the saved scale, 2**3 if it started afresh.
    plugin = (
        "trainer.precision=null",
        "+trainer.plugins=[{_target_:lightning.pytorch.plugins.precision.MixedPrecision,"
        "precision:16-mixed,device:cpu,scaler:{_target_:torch.amp.GradScaler,device:cpu,"
        "init_scale:1.0,growth_factor:2.0,growth_interval:1}}]",
    )
    train(run_dir(smoke_cfg(*plugin, "trainer.max_epochs=1"), tmp_path / "first"))
    first = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert torch.load(first, weights_only=True)["MixedPrecision"]["scale"] == 2.0**3

    train(
        run_dir(
            smoke_cfg(*plugin, "trainer.max_epochs=2", f"ckpt_path={first}"), tmp_path / "second"
        )
    )
    second = torch.load(tmp_path / "second" / "checkpoints" / "last.ckpt", weights_only=True)
    assert second["global_step"] == 6
    assert second["MixedPrecision"]["scale"] == 2.0**6
