"""Speed switches change how the model runs, never what it computes or what a checkpoint holds."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from omegaconf import open_dict

from src.train import train
from src.utils.build import build_loss, build_module
from tests.helpers.cli import run_script
from tests.helpers.models import randomize_score_layers


def make_module(cfg, model: torch.nn.Module, **switches) -> L.LightningModule:
    """The module train.py builds around `model`, with `module.<switch>=<value>` set."""
    cfg = copy.deepcopy(cfg)
    for key, value in switches.items():
        cfg.module[key] = value
    return build_module(cfg, model, build_loss(cfg.loss))


def test_channels_last_changes_the_layout_not_the_logits(smoke_cfg) -> None:
    cfg = smoke_cfg()
    model = randomize_score_layers(hydra.utils.instantiate(cfg.model))  # untrained, they score 0
    eager = make_module(cfg, copy.deepcopy(model)).eval()
    fast = make_module(cfg, model, channels_last=True).eval()
    conv = next(m for m in fast.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(fast(images), eager(images), rtol=1e-4, atol=1e-5)
    assert fast.state_dict().keys() == eager.state_dict().keys()


@pytest.mark.slow
def test_bf16_mixed_trains_on_cpu(smoke_cfg, tmp_path: Path) -> None:
    # (on CPU Lightning runs 16-mixed as bf16-mixed; fp16 with a GradScaler is in test_resume.py)
    cfg = smoke_cfg("trainer.precision=bf16-mixed", "trainer.max_epochs=1")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss_epoch"]))
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["precision"] == "bf16-mixed"
    assert summary["best"]["val/mIoU"] == pytest.approx(metrics["val/mIoU_best"])


@pytest.mark.slow
def test_compile_trains_and_keeps_eager_checkpoint_keys(smoke_cfg, monkeypatch) -> None:
    # Inductor's C++ build takes minutes on a 2-core CI runner; aot_eager runs the same Dynamo
    # capture and AOTAutograd forward/backward graphs, without generating kernels.
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(
        torch.nn.Module,
        "compile",
        lambda self, **kw: compile_module(self, backend="aot_eager", **kw),
    )
    torch._dynamo.reset()
    cfg = smoke_cfg()
    model = hydra.utils.instantiate(cfg.model)
    reference = copy.deepcopy(model)
    module = make_module(cfg, model, compile=True)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    datamodule = hydra.utils.instantiate(cfg.data)
    trainer.fit(module, datamodule=datamodule)

    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the compiled path ran
    state = module.state_dict()
    assert state.keys() == make_module(cfg, reference).state_dict().keys()  # no `_orig_mod.`
    # the trained weights load into a plain eager model and give the compiled model's logits
    reference.load_state_dict(
        {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    )
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            module.eval()(images), reference.eval()(images), rtol=1e-4, atol=1e-5
        )


@pytest.mark.slow
def test_bench_train_measures_both_paths(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    tiny = [
        "--steps",
        "2",
        "--warmup",
        "1",
        "--repeats",
        "1",
        "--batch",
        "2",
        "--size",
        "64",
        "--width",
        "0.0625",
    ]
    result = run_script([sys.executable, "scripts/bench_train.py", *tiny], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    found = re.findall(r"(bare|lightning)\s+([\d.]+) images/s", result.stdout)
    assert [name for name, _ in found] == ["bare", "lightning"] and all(
        float(v) > 0 for _, v in found
    )
    ratio = float(re.search(r"ratio lightning/bare = ([\d.]+)", result.stdout).group(1))
    assert ratio == pytest.approx(float(found[1][1]) / float(found[0][1]), rel=0.05)
