"""The real TensorBoard server over a smoke run shows what a user would look for in the browser."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from src.callbacks.image_logger import CONFUSION_TAG, GRID_TAG
from src.data.palette import colour_table
from src.data.transforms import normalize, pad_collate
from src.metrics import confusion_matrix
from src.train import train
from src.utils.checkpoint import model_from_checkpoint
from src.visualization import confusion_matrix_image, sample_grid
from tests.conftest import SMOKE_DATA, compose_config

pytestmark = pytest.mark.slow  # a training run plus a server start-up

CLASSES = ["background", "disc", "square", "triangle", "ring", "cross"]
RUN = "tensorboard"  # the logger's sub-folder of the output dir: TensorBoard's run name


@pytest.fixture(scope="module")
def run_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output dir of one smoke training run."""
    root = tmp_path_factory.mktemp("tb_smoke")
    train(
        compose_config(
            "train",
            ["debug=smoke", *SMOKE_DATA, f"paths.data_dir={data_dir}", f"paths.log_dir={root}/logs"],
            root / "run",
        )
    )
    return root / "run"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """HTTP helpers for a running TensorBoard."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> bytes:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.base}{path}{query}", timeout=30) as response:
            return response.read()

    def get_json(self, path: str, **params: str):
        return json.loads(self.get(path, **params))

    def post_json(self, path: str, body: dict):
        request = urllib.request.Request(
            f"{self.base}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())


@pytest.fixture(scope="module")
def server(run_dir: Path):
    """`tensorboard --logdir <run dir> --host 127.0.0.1 --port <free>`, up until its data is loaded; killed afterwards."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "tensorboard.main",
        "--logdir",
        str(run_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--load_fast",
        "false",
    ]
    log = (run_dir / "tensorboard_server.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = Server(port)
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (run_dir / "tensorboard_server.log").read_text()
            try:
                images = client.get_json("/data/plugin/images/tags").get(RUN, {})
                scalars = client.get_json("/data/plugin/scalars/tags").get(RUN, {})
                if GRID_TAG in images and CONFUSION_TAG in images and "val/mIoU" in scalars:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass  # not listening yet
            assert time.monotonic() < deadline, "TensorBoard did not serve the run within 120 s"
            time.sleep(0.5)
        yield client
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def latest_image(server: Server, tag: str) -> tuple[int, np.ndarray]:
    entries = server.get_json("/data/plugin/images/images", run=RUN, tag=tag, sample="0")
    last = max(entries, key=lambda e: e["step"])
    png = server.get("/data/plugin/images/individualImage?" + last["query"])
    return last["step"], np.array(Image.open(io.BytesIO(png)).convert("RGB"))


def val_samples(data_dir: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(id, RGB image, mask) of the validation split in its list order, read from the files."""
    voc = data_dir / "synthetic_smoke" / "VOCdevkit" / "VOC2012"
    ids = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    return [
        (
            i,
            cv2.cvtColor(cv2.imread(str(voc / "JPEGImages" / f"{i}.jpg")), cv2.COLOR_BGR2RGB),
            np.array(Image.open(voc / "SegmentationClass" / f"{i}.png")),
        )
        for i in ids
    ]


@torch.no_grad()
def predict_padded(model: torch.nn.Module, images: list[np.ndarray]) -> list[np.ndarray]:
    """The last weights' prediction for images batched as validation batches them (padded to /32)."""
    samples = [
        {
            "image": torch.from_numpy(img.transpose(2, 0, 1).copy()),
            "mask": torch.zeros(img.shape[:2], dtype=torch.uint8),
            "name": "",
        }
        for img in images
    ]
    batch = pad_collate(samples, multiple=32)
    labels = model(normalize(batch["image"])).argmax(1)
    return [labels[i, :h, :w].numpy() for i, (h, w) in enumerate(batch["sizes"].tolist())]


def test_sample_grid_shows_image_ground_truth_and_prediction(
    server: Server, run_dir: Path, data_dir: Path
) -> None:
    step, grid = latest_image(server, GRID_TAG)
    samples = val_samples(data_dir)[:4]  # the callback's fixed set: the first validation images
    model, _ = model_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    predictions = [predict_padded(model, [image])[0] for _, image, _ in samples]
    expected = sample_grid(
        [(image, mask, pred) for (_, image, mask), pred in zip(samples, predictions, strict=True)],
        colour_table(),
    )
    assert grid.shape == expected.shape
    # image and ground-truth columns: exact (PNG is lossless)
    cell_w = max(image.shape[1] for _, image, _ in samples)
    split = 4 + 2 * (cell_w + 4)
    assert np.array_equal(grid[:, :split], expected[:, :split])
    # prediction column: the final weights' prediction (channels_last rounding may flip a tie)
    assert (grid[:, split:] == expected[:, split:]).all(axis=2).mean() > 0.99
    scalar_steps = [
        s for _, s, _ in server.get_json("/data/plugin/scalars/scalars", run=RUN, tag="val/mIoU")
    ]
    assert step == max(scalar_steps)  # the images sit at the step of the epoch's val scalars


def test_confusion_matrix_image_is_the_last_epochs_matrix(
    server: Server, run_dir: Path, data_dir: Path
) -> None:
    _, image = latest_image(server, CONFUSION_TAG)
    model, _ = model_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    samples = val_samples(data_dir)
    hist = torch.zeros(6, 6, dtype=torch.long)
    for start in range(0, len(samples), 4):  # debug=smoke validates in batches of 4
        chunk = samples[start : start + 4]
        for pred, (_, _, mask) in zip(
            predict_padded(model, [img for _, img, _ in chunk]), chunk, strict=True
        ):
            hist += confusion_matrix(torch.from_numpy(pred), torch.from_numpy(mask).long(), 6, 255)
    expected = confusion_matrix_image(hist, CLASSES)
    assert image.shape == expected.shape
    assert (image == expected).all(axis=2).mean() > 0.99


def test_per_class_iou_and_learning_rate_scalars(server: Server, run_dir: Path) -> None:
    tags = server.get_json("/data/plugin/scalars/tags")[RUN]
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    for name in CLASSES:
        series = server.get_json("/data/plugin/scalars/scalars", run=RUN, tag=f"val/IoU/{name}")
        assert len(series) == 2  # one point per validation epoch
        assert series[-1][2] == pytest.approx(final[f"val/IoU/{name}"], abs=1e-6)
    lr_tags = [t for t in tags if t.startswith("lr-")]
    assert lr_tags, sorted(tags)
    lrs = [
        v for _, _, v in server.get_json("/data/plugin/scalars/scalars", run=RUN, tag=lr_tags[0])
    ]
    assert lrs[0] > lrs[-1] > 0  # poly decay, stepped every iteration


def test_hparams_tab_compares_on_val_miou_best(server: Server, run_dir: Path) -> None:
    experiment = server.post_json("/data/plugin/hparams/experiment", {"experimentName": ""})
    assert {"tag": "hp/val_mIoU_best", "group": ""} in [
        m["name"] for m in experiment["metricInfos"]
    ]
    assert "hp_metric" not in json.dumps(
        experiment["metricInfos"]
    )  # not Lightning's -1 placeholder
    groups = server.post_json(
        "/data/plugin/hparams/session_groups",
        {
            "experimentName": "",
            "allowedStatuses": [
                "STATUS_UNKNOWN",
                "STATUS_SUCCESS",
                "STATUS_FAILURE",
                "STATUS_RUNNING",
            ],
            "colParams": [{"metric": {"tag": "hp/val_mIoU_best"}, "order": "ORDER_DESC"}],
            "startIndex": 0,
            "sliceSize": 10,
        },
    )["sessionGroups"]
    assert len(groups) == 1
    assert groups[0]["hparams"]["model/backbone/width"] == pytest.approx(0.0625)
    [value] = [
        m["value"] for m in groups[0]["metricValues"] if m["name"]["tag"] == "hp/val_mIoU_best"
    ]
    best = json.loads((run_dir / "metrics.json").read_text())["best"]["val/mIoU"]
    assert value == pytest.approx(best, abs=1e-6)


@pytest.mark.parametrize("multiple", [32, 64])
def test_image_logger_predicts_samples_padded_as_validation_pads_them(multiple: int) -> None:
    """callbacks.segmentation_images.pad_multiple (= data.pad_multiple) is the extent each sample is predicted at."""
    from src.callbacks.image_logger import SegmentationImageLogger

    logger = SegmentationImageLogger(num_samples=2, pad_multiple=multiple)
    batch = {
        "image": torch.randn(2, 3, 128, 128),
        "mask": torch.zeros(2, 128, 128, dtype=torch.long),
        "sizes": torch.tensor([[70, 90], [40, 33]]),
    }
    logger.on_validation_batch_end(None, None, None, batch, 0)
    padded = {32: [(96, 96), (64, 64)], 64: [(128, 128), (64, 64)]}[multiple]
    assert [tuple(image.shape[1:]) for image, _ in logger.samples] == padded
    assert [tuple(mask.shape) for _, mask in logger.samples] == [(70, 90), (40, 33)]
