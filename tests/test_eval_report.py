"""src/eval.py with the opt-in metrics: the acceptance command, its numbers against metrics computed
on reference predictions, TTA, a user's own metric, config errors, and report.html in a real browser."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.data.io import read_image
from src.eval import evaluate
from src.metrics import (
    BoundaryFScore,
    BoundaryIoU,
    CalibrationError,
    PerImageScores,
    SegmentationMetric,
)
from src.utils.build import plain_config
from src.utils.checkpoint import model_from_checkpoint
from src.utils.errors import UserError
from tests.conftest import ROOT, SMOKE_DATA, TINY_FCN8S_CFG, compose_config
from tests.helpers.checkpoints import write_checkpoint
from tests.helpers.cli import run_script
from tests.helpers.inference_reference import Mode, reference_probabilities

CLASSES = ["background", "disc", "square", "triangle", "ring", "cross"]
ALL_METRICS = "metrics=[miou,boundary_iou,boundary_f1,calibration]"
VOC = Path("synthetic_smoke") / "VOCdevkit" / "VOC2012"
SECTIONS = ("run", "summary", "per-class", "confusion-matrix", "reliability", "worst-images")


class ValidPixels(SegmentationMetric):
    """A user's own metric, as docs/evaluation.md's checklist adds one: the number of labelled pixels."""

    padding_safe = True

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.add_state("pixels", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count the labelled pixels of a batch."""
        self.pixels += (target != self.ignore_index).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        """The count over every process."""
        return {"pixels": self.pixels}

    def scalars(self, scores: dict[str, torch.Tensor], class_names) -> dict[str, torch.Tensor]:
        """Logged as <stage>/valid_pixels."""
        return {"valid_pixels": scores["pixels"].double()}


@pytest.fixture(scope="module")
def random_checkpoint(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of a randomised tiny FCN-8s: it predicts every class, so every score is non-trivial."""
    root = tmp_path_factory.mktemp("eval_report")
    cfg = compose_config(
        "train", ["debug=smoke", *SMOKE_DATA, f"paths.data_dir={data_dir}"], root / "cfg"
    )
    return write_checkpoint(root / "random.ckpt", TINY_FCN8S_CFG, plain_config(cfg)["data"])


def eval_args(checkpoint: Path, data_dir: Path, out: Path, *overrides: str) -> list[str]:
    """The eval command line on the smoke data, writing into `out`."""
    return [
        f"ckpt_path={checkpoint}",
        "debug=smoke",
        *SMOKE_DATA,
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={out.parent}/logs",
        f"hydra.run.dir={out}",
        *overrides,
    ]


@pytest.fixture(scope="module")
def acceptance(
    random_checkpoint: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The output dir of `python src/eval.py ckpt_path=... metrics=[miou,boundary_iou,boundary_f1,calibration] report=true`."""
    out = tmp_path_factory.mktemp("acceptance") / "eval"
    args = eval_args(random_checkpoint, data_dir, out, ALL_METRICS, "report=true", "worst_k=3")
    result = run_script([sys.executable, "src/eval.py", *args])
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def val_pairs(data_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (RGB image, mask)} of the smoke set's validation split, read from the files."""
    voc = data_dir / VOC
    names = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    return {
        name: (
            read_image(voc / "JPEGImages" / f"{name}.jpg"),
            np.array(Image.open(voc / "SegmentationClass" / f"{name}.png")),
        )
        for name in names
    }


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_acceptance_command_writes_every_output(acceptance: Path, data_dir: Path) -> None:
    for name in (
        "metrics.json",
        "per_image.csv",
        "reliability.png",
        "report.html",
        "worst_images.png",
    ):
        assert (acceptance / name).is_file(), name
    saved = json.loads((acceptance / "metrics.json").read_text())
    for key in ("test/mIoU", "test/mBIoU", "test/BIoU/disc", "test/mBF", "test/mBF_pooled", "test/BF/disc",
                "test/ECE", "test/MCE", "test/mIoU_image"):  # fmt: skip
        assert isinstance(saved[key], float), key
    assert saved["metrics"] == ["miou", "boundary_iou", "boundary_f1", "calibration", "per_image"]

    rows = read_csv(acceptance / "per_image.csv")
    pairs = val_pairs(data_dir)
    assert sorted(row["image"] for row in rows) == sorted(pairs)
    scores = [float(row["mIoU"]) for row in rows]
    assert scores == sorted(scores)  # worst first
    assert saved["test/mIoU_image"] == pytest.approx(np.mean(scores), rel=1e-12)
    assert saved["test/mIoU_image"] != pytest.approx(
        saved["test/mIoU"], rel=1e-3
    )  # not the dataset mIoU
    labelled = sum(int((mask != 255).sum()) for _, mask in pairs.values())
    assert sum(int(row["valid_pixels"]) for row in rows) == labelled
    assert sum(saved["reliability"]["pixels"]) == labelled == np.sum(saved["confusion_matrix"])
    assert [row["image"] for row in saved["worst_images"]] == [row["image"] for row in rows[:3]]

    worst = np.array(Image.open(acceptance / "worst_images.png"))
    assert worst.shape[0] > 3 * 64 and worst.shape[1] > 5 * 64  # 3 rows of 5 panels

    events = EventAccumulator(
        str(acceptance / "tensorboard"), size_guidance={"scalars": 0, "images": 0}
    )
    events.Reload()
    for key in (
        "test/mBIoU",
        "test/BIoU/disc",
        "test/mBF",
        "test/ECE",
        "test/MCE",
        "test/mIoU_image",
    ):
        assert events.Scalars(key)[-1].value == pytest.approx(saved[key], rel=1e-6), key
    assert {"test/reliability", "test/worst_images", "test/confusion_matrix"} <= set(
        events.Tags()["images"]
    )


def reference_results(checkpoint: Path, data_dir: Path, mode: Mode) -> dict[str, dict[str, Any]]:
    """The metrics fed with predictions of the reference inference (its own padding, normalisation, TTA)."""
    model = model_from_checkpoint(checkpoint)[0]
    metrics = {
        "boundary_iou": BoundaryIoU(6),
        "boundary_f1": BoundaryFScore(6),
        "calibration": CalibrationError(6),
        "per_image": PerImageScores(6),
    }
    for name, (image, mask) in val_pairs(data_dir).items():
        probs = torch.from_numpy(reference_probabilities(model, image, mode)).unsqueeze(0)
        pred, target = probs.argmax(1), torch.from_numpy(mask).long().unsqueeze(0)
        metrics["boundary_iou"].update(pred, target)
        metrics["boundary_f1"].update(pred, target)
        metrics["calibration"].update(probs, target)
        metrics["per_image"].update(pred, target, [name])
    return {name: metric.compute() for name, metric in metrics.items()}


def assert_matches_reference(saved: dict[str, Any], reference: dict[str, dict[str, Any]]) -> None:
    """eval's numbers against the metrics on reference predictions (a pixel or two may flip on a near-tie)."""
    for key, value in (
        ("test/mBIoU", reference["boundary_iou"]["mBIoU"]),
        ("test/mBF", reference["boundary_f1"]["mBF"]),
        ("test/mBF_pooled", reference["boundary_f1"]["mBF_pooled"]),
        ("test/mIoU_image", reference["per_image"]["mIoU_image"]),
    ):
        assert saved[key] == pytest.approx(float(value), abs=5e-3), key
    assert saved["test/ECE"] == pytest.approx(float(reference["calibration"]["ECE"]), abs=1e-3)
    assert saved["reliability"]["pixels"] == reference["calibration"]["bin_pixels"].tolist()


def test_acceptance_numbers_equal_metrics_of_reference_predictions(
    acceptance: Path, random_checkpoint: Path, data_dir: Path
) -> None:
    saved = json.loads((acceptance / "metrics.json").read_text())
    reference = reference_results(random_checkpoint, data_dir, Mode())
    assert_matches_reference(saved, reference)
    rows = {row["image"]: row for row in read_csv(acceptance / "per_image.csv")}
    for index, name in enumerate(reference["per_image"]["names"]):
        assert float(rows[name]["mIoU"]) == pytest.approx(
            float(reference["per_image"]["mIoU"][index]), abs=5e-3
        )


@pytest.fixture(scope="module")
def tta_run(
    random_checkpoint: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """eval in TTA mode with every metric and a user's own metric added from the command line."""
    out = tmp_path_factory.mktemp("tta")
    overrides = [
        f"ckpt_path={random_checkpoint}", "debug=smoke", *SMOKE_DATA, f"paths.data_dir={data_dir}",
        f"paths.log_dir={out}/logs", ALL_METRICS, "eval.tta=true", "eval.scales=[1.0]",
        "eval.flip=true", "+metrics.valid_pixels={_target_: tests.test_eval_report.ValidPixels}",
    ]  # fmt: skip
    return evaluate(compose_config("eval", overrides, out / "eval"))


def test_tta_scores_probabilities_once(
    tta_run: dict[str, Any], random_checkpoint: Path, data_dir: Path
) -> None:
    # TTA's scores are already probabilities: a second softmax would squash every confidence
    reference = reference_results(random_checkpoint, data_dir, Mode(scales=(1.0,), flip=True))
    assert_matches_reference(tta_run, reference)
    assert tta_run["inference"]["tta"] is True


def test_a_metric_added_through_config_reaches_metrics_json(
    tta_run: dict[str, Any], data_dir: Path
) -> None:
    labelled = sum(int((mask != 255).sum()) for _, mask in val_pairs(data_dir).values())
    assert tta_run["test/valid_pixels"] == labelled
    assert "valid_pixels" in tta_run["metrics"]


def run_cli(script: str, *args: str) -> subprocess.CompletedProcess:
    return run_script([sys.executable, script, *args])


@pytest.mark.parametrize("script", ["src/eval.py", "src/train.py"])
def test_misspelt_metric_names_the_key_and_choices(script: str, tmp_path: Path) -> None:
    result = run_cli(
        script, "ckpt_path=x.ckpt", "metrics=[miou,boundary_iuo]", f"paths.log_dir={tmp_path}"
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert (
        "seglab: error: metrics=[miou,boundary_iuo]: no metric named boundary_iuo" in result.stderr
    )
    assert (
        "choices (conf/metrics/): boundary_f1, boundary_iou, calibration, miou, per_image"
        in result.stderr
    )


def test_bad_option_stops_before_any_model_is_built(tmp_path: Path, data_dir: Path) -> None:
    # eval: the metric's error comes before the (missing) checkpoint is even opened
    result = run_cli(
        "src/eval.py", f"ckpt_path={tmp_path}/missing.ckpt", "metrics=[miou,calibration]",
        "metrics.calibration.bins=0", f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path}/eval",
    )  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert (
        "seglab: error: metrics.calibration.bins=0: expected a whole number of bins >= 1"
        in result.stderr
    )
    # train: before the model (whose size it would log) is built
    result = run_cli(
        "src/train.py", "debug=smoke", *SMOKE_DATA, "metrics=[miou,boundary_iou]",
        "metrics.boundary_iou.dilation_ratio=-0.1", f"paths.log_dir={tmp_path}/logs", f"paths.data_dir={data_dir}",
    )  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "metrics.boundary_iou.dilation_ratio=-0.1: expected a positive number" in result.stderr
    assert "M parameters" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["metrics=[boundary_iou]"], r"metrics=\[boundary_iou\] leaves out miou.*metrics=\[miou,boundary_iou\]"),
        (["+metrics.calibration.binz=3", ALL_METRICS], r"metrics\.calibration \(src\.metrics\.CalibrationError\): .*binz"),
        (["+metrics.mine={_target_: torch.nn.Identity}"], r"metrics\.mine: torch\.nn\.Identity is not a src\.metrics\.SegmentationMetric"),
        (["worst_k=-1"], r"worst_k=-1: expected the number of worst images"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(
    overrides, message, random_checkpoint: Path, data_dir: Path, tmp_path: Path
) -> None:
    cfg = compose_config(
        "eval",
        [f"ckpt_path={random_checkpoint}", f"paths.data_dir={data_dir}", *SMOKE_DATA, *overrides],
        tmp_path,
    )
    with pytest.raises(UserError, match=message):
        evaluate(cfg)


# ---- report.html in a real headless browser --------------------------------------------------

BROWSER_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


def chromium_or_skip() -> str:
    """The OS's Chromium (`make test` installs it first: scripts/install_browser.sh); else skip with the reason."""
    script = ROOT / "scripts" / "install_browser.sh"
    done = subprocess.run(
        ["bash", str(script), "--check"], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        pytest.skip(f"no headless browser: {done.stderr.strip().splitlines()[-1]}")
    return os.environ.get("SEGLAB_CHROMIUM", "/usr/bin/chromium")


def expected_value(payload: dict[str, Any], key: str) -> Any:
    """The metrics.json value a page element's data-key names."""
    if key.startswith("test/"):
        return payload[key]
    kind, index, *rest = key.split("/", 2)
    if kind == "confusion_matrix":
        return payload[kind][int(index)][int(rest[0])]
    if kind == "reliability":
        field, bin_index = index, int(rest[0])
        return payload[kind][field][bin_index]
    return payload[kind][int(index)][rest[0]]  # worst_images/<i>/<column>


def expected_text(key: str, value: Any) -> str:
    """How the page should show `value`: percentages with 2 decimals, fractions 4, counts whole."""
    if value is None:
        return "-"
    if key.startswith("confusion_matrix") or key.endswith("valid_pixels") or "/pixels/" in key:
        return f"{value:.0f}"
    if key in ("test/ECE", "test/MCE") or key.startswith("reliability/"):
        return f"{value:.4f}"
    return f"{100 * value:.2f}"


def test_report_opens_in_a_browser_and_shows_metrics_json(acceptance: Path) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is in the report extra"
    )
    executable = chromium_or_skip()
    payload = json.loads((acceptance / "metrics.json").read_text())
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=BROWSER_ARGS)
        page = browser.new_page()
        problems: list[str] = []
        page.on(
            "console",
            lambda message: problems.append(message.text) if message.type == "error" else None,
        )
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on(
            "request",
            lambda r: None if r.url.startswith(("file:", "data:")) else problems.append(r.url),
        )
        page.goto((acceptance / "report.html").as_uri(), wait_until="load")
        for section in SECTIONS:
            assert page.locator(f"section#{section}").is_visible(), section
        assert page.evaluate(
            "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
        )
        assert page.locator("section#worst-images article").count() == 3
        cells = page.eval_on_selector_all(
            "[data-key]", "cells => cells.map(c => [c.dataset.key, c.dataset.value, c.textContent])"
        )
        browser.close()
    assert problems == []
    shown = set()
    for key, value, text in cells:
        expected = expected_value(payload, key)
        assert json.loads(value) == expected, key
        assert text == expected_text(key, expected), key
        shown.add(key)
    scalars = {
        key for key in payload if key.startswith("test/") and not key.startswith("test/BF_pooled/")
    }
    assert scalars <= shown
    assert not math.isnan(payload["test/ECE"])
