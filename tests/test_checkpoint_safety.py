"""Checkpoints load with weights_only=True: a pickled payload is refused and never runs."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import cv2
import hydra
import numpy as np
import pytest
import torch

from src.eval import evaluate
from src.predict import predict
from src.train import train
from src.utils import build
from src.utils.checkpoint import load_checkpoint, model_from_checkpoint
from src.utils.errors import UserError
from tests.conftest import SMOKE_DATA, TINY_FCN8S_CFG, compose_config
from tests.helpers.cli import run_script

MODEL_CFG = TINY_FCN8S_CFG


class Payload:
    """Unpickling this calls exec on code that writes a marker file: what an attacker's checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (
            exec,
            (f"__import__('pathlib').Path({str(self.marker)!r}).write_text('payload ran')",),
        )


def tiny_checkpoint(extra: dict | None = None) -> dict:
    """A checkpoint shaped like src/train.py's: model tensors under `model.` and the run config."""
    torch.manual_seed(0)
    model = hydra.utils.instantiate(MODEL_CFG)
    return {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"num_classes": 6, "config": {"model": dict(MODEL_CFG), "data": {}}},
        **(extra or {}),
    }


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    """(checkpoint with a live payload, the marker file the payload would write)."""
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.ckpt"
    torch.save(tiny_checkpoint({"callbacks": {"innocent-looking": Payload(marker)}}), path)
    return path, marker


def test_the_payload_is_live_when_loaded_unsafely(evil) -> None:
    # Guards the other tests: the file really would run code under weights_only=False.
    path, marker = evil
    torch.load(path, weights_only=False)
    assert marker.read_text() == "payload ran"


def test_load_checkpoint_refuses_the_payload(evil) -> None:
    path, marker = evil
    with pytest.raises(
        UserError,
        match=r"checkpoint .*evil\.ckpt needs arbitrary unpickling \(it references (builtins\.)?exec\)",
    ):
        load_checkpoint(path)
    assert not marker.exists()


def test_numpy_objects_are_refused_too(tmp_path: Path) -> None:
    path = tmp_path / "numpy.ckpt"
    torch.save(tiny_checkpoint({"rng": np.random.get_state()}), path)
    with pytest.raises(
        UserError, match=r"numpy.ckpt needs arbitrary unpickling \(it references numpy"
    ):
        load_checkpoint(path)


def test_a_clean_checkpoint_rebuilds_the_model(tmp_path: Path) -> None:
    path = tmp_path / "clean.ckpt"
    state = tiny_checkpoint()
    torch.save(state, path)
    model, hparams = model_from_checkpoint(path)
    assert hparams["num_classes"] == 6 and not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["state_dict"][f"model.{key}"]), key


def test_unreadable_and_foreign_files_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.ckpt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match=r"checkpoint .*junk\.ckpt cannot be read"):
        load_checkpoint(tmp_path / "junk.ckpt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(UserError, match=r"plain\.pt has no 'state_dict'"):
        load_checkpoint(tmp_path / "plain.pt")


def test_eval_and_predict_refuse_it_and_the_payload_does_not_run(
    evil, data_dir: Path, tmp_path: Path
) -> None:
    path, marker = evil
    eval_cfg = compose_config(
        "eval",
        ["debug=smoke", *SMOKE_DATA, f"paths.data_dir={data_dir}", f"ckpt_path={path}"],
        tmp_path / "eval",
    )
    with pytest.raises(UserError, match="needs arbitrary unpickling"):
        evaluate(eval_cfg)
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.full((40, 48, 3), 127, np.uint8))
    predict_cfg = compose_config(
        "predict",
        [f"ckpt_path={path}", f"input={image}", f"output={tmp_path}/out"],
        tmp_path / "predict",
    )
    with pytest.raises(UserError, match="needs arbitrary unpickling"):
        predict(predict_cfg)
    assert not (tmp_path / "out" / "image.png").exists()
    assert not marker.exists()


def test_eval_cli_prints_one_line_and_exits_1(evil, tmp_path: Path) -> None:
    path, marker = evil
    result = run_script(
        [sys.executable, "src/eval.py", f"ckpt_path={path}", f"paths.log_dir={tmp_path}/logs"]
    )
    assert result.returncode == 1
    assert (
        "seglab: error: checkpoint" in result.stderr
        and "needs arbitrary unpickling" in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert not marker.exists()


def test_lightning_resume_with_weights_only_refuses_it(
    evil, data_dir: Path, tmp_path: Path
) -> None:
    # What src/train.py gets from trainer.fit(..., weights_only=True) (Lightning 2.6).
    path, marker = evil
    cfg = compose_config(
        "train",
        ["debug=smoke", *SMOKE_DATA, f"paths.data_dir={data_dir}", "trainer.max_epochs=1"],
        tmp_path / "run",
    )
    module, datamodule, trainer = build_run(cfg)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        trainer.fit(module, datamodule=datamodule, ckpt_path=path, weights_only=True)
    assert not marker.exists()


def build_run(cfg):
    """The module, datamodule and trainer train.py would build (no callbacks or loggers)."""
    run = build.build_run(cfg, trainer=False)
    trainer = build.build_trainer(cfg, callbacks=[], logger=False, enable_checkpointing=False)
    return run.module, run.datamodule, trainer


@pytest.mark.slow
def test_a_real_last_ckpt_resumes_with_weights_only(data_dir: Path, tmp_path: Path) -> None:
    cfg = compose_config(
        "train",
        ["debug=smoke", *SMOKE_DATA, f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path}/logs"],
        tmp_path / "run",
    )
    train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == 6  # 2 epochs x 3 batches: the real last one
    resume = compose_config(
        "train",
        ["debug=smoke", *SMOKE_DATA, f"paths.data_dir={data_dir}", "trainer.max_epochs=3"],
        tmp_path / "resumed",
    )
    module, datamodule, trainer = build_run(resume)
    trainer.fit(module, datamodule=datamodule, ckpt_path=last, weights_only=True)
    assert trainer.global_step == 9 and trainer.current_epoch == 3
