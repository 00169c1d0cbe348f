"""`logger=csv | mlflow | wandb | many`: each logger a user picks gets seglab's metrics, the run's
config and tags, and (where it takes images) the validation images; the config tree is saved."""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from lightning_utilities.core.imports import RequirementCache
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from src.callbacks.image_logger import CONFUSION_TAG, GRID_TAG, mlflow_artifact_path
from src.train import train
from src.utils.build import build_loggers
from src.utils.config_tree import TREE_FILE
from src.utils.errors import UserError
from src.utils.hparams import mlflow_key, mlflow_params

EPOCHS = 2  # debug=smoke: one validation per epoch


def summary(out: Path) -> dict:
    """metrics.json of a run: the best and final validation metrics."""
    return json.loads((out / "metrics.json").read_text())


def csv_rows(out: Path) -> list[dict[str, str]]:
    """The rows of the CSV logger's metrics.csv (empty cells: not logged in that call)."""
    return list(csv.DictReader(io.StringIO((out / "csv" / "metrics.csv").read_text())))


def check_config_tree(out: Path) -> None:
    """config_tree.log: one branch per group in conf/train.yaml's order, each with its resolved YAML."""
    text = (out / TREE_FILE).read_text(encoding="utf-8")
    branches = [line[4:] for line in text.splitlines() if line.startswith(("├── ", "└── "))]
    groups = ["data", "model", "loss", "optim", "module", "trainer", "callbacks", "logger", "paths"]
    assert branches[: len(groups)] == groups
    assert "hydra" not in branches and {"task_name", "tags", "seed"} <= set(branches)
    for line in ("backbone:", "max_epochs: 2", "csv:", f"output_dir: {out}", "- smoke"):
        assert line in text, line


def test_csv_run_has_seglab_metrics_and_config_and_saves_the_config_tree(smoke_cfg) -> None:
    cfg = smoke_cfg("logger=csv", "tags=[smoke,csv]")
    metrics = train(cfg)
    out = Path(cfg.paths.output_dir)
    assert not (out / "tensorboard").exists()  # only the chosen logger writes
    rows = csv_rows(out)
    for column in ("train/loss_step", "train/loss_epoch", "val/loss", "val/mIoU", "val/IoU/disc",
                   "val/mIoU_best", "hp/val_mIoU_best", "lr-AdamW", "epoch", "step"):
        assert column in rows[0], f"{column} missing from {sorted(rows[0])}"
    train_steps = [int(row["step"]) for row in rows if row["train/loss_step"]]
    assert train_steps == list(range(EPOCHS * cfg.trainer.limit_train_batches))  # a row per step
    val_rows = [row for row in rows if row["val/mIoU"]]
    assert [int(row["epoch"]) for row in val_rows] == list(range(EPOCHS))  # a row per validation
    best, final = summary(out)["best"], summary(out)["final"]
    assert float(val_rows[-1]["val/mIoU"]) == pytest.approx(final["val/mIoU"], abs=1e-7)
    assert float(val_rows[best["epoch"]]["val/IoU/disc"]) == pytest.approx(best["val/IoU/disc"], abs=1e-7)
    assert float(val_rows[-1]["val/mIoU_best"]) == pytest.approx(metrics["val/mIoU_best"], abs=1e-7)

    hparams = yaml.safe_load((out / "csv" / "hparams.yaml").read_text())
    assert hparams["tags"] == ["smoke", "csv"]
    assert hparams["model"]["backbone"]["width"] == 0.0625
    check_config_tree(out)


def mlflow_run(tracking_uri: str):
    """(client, the one run) of the run dir's MLflow store, read as a user would."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("seglab").experiment_id])
    return client, run


def png(client, run_id: str, path: str) -> np.ndarray:
    """An image artifact as RGB pixels."""
    local = client.download_artifacts(run_id, path)
    return np.array(Image.open(local).convert("RGB"))


def test_mlflow_run_has_metrics_params_tags_and_images(
    smoke_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory (MLflow's ./mlruns)
    cfg = smoke_cfg("logger=mlflow", "tags=[smoke,mlflow]")
    train(cfg)
    out = Path(cfg.paths.output_dir)
    client, run = mlflow_run(cfg.logger.mlflow.tracking_uri)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.replace("file://", "").startswith(str(out / "mlflow"))
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()

    history = client.get_metric_history(run.info.run_id, "val/mIoU")
    best, final = summary(out)["best"], summary(out)["final"]
    assert len(history) == EPOCHS
    assert history[-1].value == pytest.approx(final["val/mIoU"], abs=1e-7)
    assert max(m.value for m in history) == pytest.approx(best["val/mIoU"], abs=1e-7)
    assert {"val/IoU/disc", "train/loss_step", "val/mIoU_best", "lr-AdamW"} <= set(run.data.metrics)

    params = run.data.params
    assert params["model/backbone/width"] == "0.0625"
    assert params["tags"] == "['smoke', 'mlflow']"
    assert run.data.tags["smoke"] == "true" and run.data.tags["mlflow"] == "true"

    artifacts = {
        f.path
        for folder in ("", GRID_TAG, CONFUSION_TAG)
        for f in client.list_artifacts(run.info.run_id, folder)
    }
    for epoch in range(EPOCHS):
        assert {mlflow_artifact_path(GRID_TAG, epoch), mlflow_artifact_path(CONFUSION_TAG, epoch)} <= artifacts
    assert "config.yaml" in artifacts
    config = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config.yaml")).read_text())
    assert config["data"]["class_names"] == list(cfg.data.class_names)  # whole, not cut at 250 chars


def tensorboard_hparams(event_dir: Path) -> dict[str, object]:
    """The hyper-parameters TensorBoard's HPARAMS tab shows for a run."""
    acc = EventAccumulator(str(event_dir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {key: getattr(value, value.WhichOneof("kind")) for key, value in info.hparams.items()}


def test_many_logs_to_tensorboard_csv_and_mlflow_alike(smoke_cfg) -> None:
    pytest.importorskip("mlflow")
    cfg = smoke_cfg("logger=many", "tags=[smoke,many]")
    train(cfg)
    out = Path(cfg.paths.output_dir)
    assert sorted(cfg.logger) == ["csv", "mlflow", "tensorboard"]

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tb_miou = [e.value for e in acc.Scalars("val/mIoU")]
    csv_miou = [float(row["val/mIoU"]) for row in csv_rows(out) if row["val/mIoU"]]
    client, run = mlflow_run(cfg.logger.mlflow.tracking_uri)
    mlflow_miou = [m.value for m in client.get_metric_history(run.info.run_id, "val/mIoU")]
    assert tb_miou == pytest.approx(csv_miou, abs=1e-7) and tb_miou == pytest.approx(mlflow_miou, abs=1e-7)

    assert tensorboard_hparams(out / "tensorboard")["tags"] == "['smoke', 'many']"
    assert run.data.tags["many"] == "true"
    # the same picture in TensorBoard and among the MLflow artifacts (both PNG: lossless)
    last = acc.Images(GRID_TAG)[-1]
    tensorboard_grid = np.array(Image.open(io.BytesIO(last.encoded_image_string)).convert("RGB"))
    mlflow_grid = png(client, run.info.run_id, mlflow_artifact_path(GRID_TAG, EPOCHS - 1))
    assert np.array_equal(tensorboard_grid, mlflow_grid)


def test_wandb_runs_offline_without_an_account(
    smoke_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wandb = pytest.importorskip("wandb")
    # no account, no network: nothing read from or written to the user's W&B settings
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")  # restored afterwards (Lightning sets it for offline)
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb_home"))
    cfg = smoke_cfg("logger=wandb", "tags=[smoke,wandb]")
    metrics = train(cfg)
    out = Path(cfg.paths.output_dir)
    run = wandb.run
    try:
        assert run.offline and Path(run.dir).is_relative_to(out / "wandb")
        assert run.tags == ("smoke", "wandb")
        assert run.config["model"]["backbone"]["width"] == 0.0625
        assert run.summary["val/mIoU"] == pytest.approx(metrics["val/mIoU"], abs=1e-7)
    finally:
        wandb.finish()
    media = {p.name.rsplit("_", 2)[0] for p in (Path(run.dir) / "media" / "images" / "val").glob("*.png")}
    assert media == {"samples", "confusion_matrix"}


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("model/backbone/width", "model/backbone/width"),
        ("loss/my term+x", "loss/my term_x"),
        ("data/spec/a:b", "data/spec/a_b"),
        ("a//b", "a/b"),
        ("./a/..", "_/a/_"),
        ("/abs/", "abs"),
        ("", "_"),
    ],
)
def test_mlflow_keys_keep_to_what_mlflow_accepts(key: str, expected: str) -> None:
    assert mlflow_key(key) == expected


def test_mlflow_params_are_flat_valid_and_text() -> None:
    config = {"model": {"backbone": {"width": 0.5}}, "odd keys": {"x=1": None, "": [1, 2]}, "k" * 300: 1}
    params = mlflow_params(config)
    assert params["model/backbone/width"] == "0.5"
    assert params["odd keys/x_1"] == "None" and params["odd keys"] == "[1, 2]"
    for key in params:  # MLflow's rule: these characters, at most 250, and a name that is its own path
        assert re.fullmatch(r"[\w\-./ ]{1,250}", key) and posixpath.normpath(key) == key, key


@pytest.mark.parametrize(
    ("logger", "availability"),
    [
        ("mlflow", "lightning.pytorch.loggers.mlflow._MLFLOW_AVAILABLE"),
        ("wandb", "lightning.pytorch.loggers.wandb._WANDB_AVAILABLE"),
    ],
)
def test_a_missing_logger_package_names_the_extra(
    smoke_cfg, monkeypatch: pytest.MonkeyPatch, logger: str, availability: str
) -> None:
    monkeypatch.setattr(availability, RequirementCache("seglab-test-absent-package>=1"))
    with pytest.raises(UserError, match=rf"logger\.{logger} needs seglab's '{logger}' extra.*pip install -e '\.\[{logger}\]'"):
        build_loggers(smoke_cfg(f"logger={logger}").logger)
