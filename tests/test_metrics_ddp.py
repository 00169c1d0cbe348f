"""The metrics are exact under DDP: 2 CPU processes (gloo) give the 1-process numbers, set size odd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # also when run as a script (the Lightning-level check below)

from src.data.samplers import UnpaddedDistributedSampler  # noqa: E402
from src.metrics import (  # noqa: E402
    BoundaryFScore,
    BoundaryIoU,
    CalibrationError,
    MetricSet,
    PerImageScores,
    SegmentationMetrics,
)
from tests.helpers.label_maps import NUM_CLASSES as SCENE_CLASSES  # noqa: E402
from tests.helpers.label_maps import scenes  # noqa: E402

NUM_CLASSES, ABSENT, NUM_SAMPLES = 5, 3, 7  # 7 samples over 2 processes: not divisible


def make_samples(path: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random (prediction, label) pairs with ignored pixels and a class absent from both; saved for the workers."""
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(NUM_SAMPLES):
        label = rng.integers(0, NUM_CLASSES, (13, 17))
        pred = rng.integers(0, NUM_CLASSES, (13, 17))
        label[label == ABSENT], pred[pred == ABSENT] = 0, 1
        label[rng.random(label.shape) < 0.25] = 255
        samples.append((torch.from_numpy(pred), torch.from_numpy(label)))
    torch.save(samples, path)
    return samples


def make_scenes(path: Path) -> list[dict]:
    """Images of different sizes with probabilities and names, for every metric of the set."""
    generator = torch.Generator().manual_seed(0)
    items = []
    for index, (pred, label) in enumerate(scenes(NUM_SAMPLES)):
        logits = torch.randn(SCENE_CLASSES, *label.shape, generator=generator) * 3
        logits.scatter_add_(0, torch.from_numpy(pred)[None], torch.full((1, *label.shape), 4.0))
        probs = logits.softmax(0)
        # a confidence of exactly 1.0
        probs[:, 0, 0] = torch.nn.functional.one_hot(torch.tensor(1), SCENE_CLASSES)
        items.append({"probs": probs, "target": torch.from_numpy(label), "name": f"scene_{index}"})
    torch.save(items, path)
    return items


def full_metric_set() -> MetricSet:
    """Every metric of the set, options off their defaults where that exercises more."""
    return MetricSet(
        {
            "miou": SegmentationMetrics(SCENE_CLASSES),
            "boundary_iou": BoundaryIoU(SCENE_CLASSES, dilation_ratio=0.1),
            "boundary_f1": BoundaryFScore(SCENE_CLASSES, tolerance_px=1.5),
            "calibration": CalibrationError(SCENE_CLASSES, bins=10),
            "per_image": PerImageScores(SCENE_CLASSES),
        }
    )


def metric_set_results(items: list[dict], indices) -> dict:
    """Every metric's compute() after updating on `items[indices]`, one image at a time."""
    metrics = full_metric_set()
    for index in indices:
        item = items[index]
        probs = item["probs"].unsqueeze(0)
        metrics.update(probs.argmax(1), item["target"].unsqueeze(0), probs, [item["name"]])
    return metrics.compute()


def fast_hist(label: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """A numpy confusion matrix as `fast_hist` computes it (labels outside [0, n) dropped)."""
    k = (label >= 0) & (label < n)
    return np.bincount(n * label[k].astype(int) + pred[k], minlength=n**2).reshape(n, n)


def worker(rank: int, world: int, store: str, samples_path: str, out_path: str) -> None:
    """One DDP process: update on its shard (unpadded, and torch's padded), compute (all-reduce), rank 0 saves."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        samples = torch.load(samples_path)
        items = torch.load(Path(samples_path).with_name("scenes.pt"))
        results = {
            "metric_set": metric_set_results(items, UnpaddedDistributedSampler(items, world, rank))
        }
        for name, sampler in (
            ("unpadded", UnpaddedDistributedSampler(samples, world, rank)),
            ("padded", DistributedSampler(samples, num_replicas=world, rank=rank, shuffle=False)),
        ):
            metric = SegmentationMetrics(NUM_CLASSES, ignore_index=255)
            for index in sampler:
                metric.update(*samples[index])
            scores = metric.compute()
            results[name] = {
                "confmat": metric.last_confmat,
                "mIoU": scores["mIoU"],
                "IoU": scores["IoU"],
            }
        if rank == 0:
            torch.save(results, out_path)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, dict]:
    """The samples and rank 0's results of one 2-process gloo run."""
    tmp = tmp_path_factory.mktemp("gloo")
    samples = make_samples(tmp / "samples.pt")
    make_scenes(tmp / "scenes.pt")
    mp.spawn(
        worker,
        args=(2, str(tmp / "store"), str(tmp / "samples.pt"), str(tmp / "out.pt")),
        nprocs=2,
        join=True,
    )
    return samples, {**torch.load(tmp / "out.pt"), "scenes": torch.load(tmp / "scenes.pt")}


def single_process(samples) -> tuple[torch.Tensor, dict]:
    metric = SegmentationMetrics(NUM_CLASSES, ignore_index=255)
    for pred, label in samples:
        metric.update(pred, label)
    scores = metric.compute()
    return metric.confmat.clone(), scores


@pytest.mark.slow
def test_two_gloo_processes_sum_to_the_single_process_matrix(two_process_run) -> None:
    samples, results = two_process_run
    single, scores = single_process(samples)
    reference = sum(fast_hist(label.numpy(), pred.numpy(), NUM_CLASSES) for pred, label in samples)
    assert np.array_equal(single.numpy(), reference)

    result = results["unpadded"]
    assert torch.equal(result["confmat"], single)
    assert torch.equal(result["IoU"].isnan(), scores["IoU"].isnan()) and bool(
        result["IoU"][ABSENT].isnan()
    )
    assert result["mIoU"].item() == scores["mIoU"].item()


def assert_identical(got, expected, where: str) -> None:
    """Same structure, same values bit for bit (NaN where NaN)."""
    if isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key in expected:
            assert_identical(got[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, torch.Tensor):
        assert got.shape == expected.shape and got.dtype == expected.dtype, where
        assert torch.equal(got.isnan(), expected.isnan()), where
        assert torch.equal(got.nan_to_num(0.0), expected.nan_to_num(0.0)), where
    else:
        assert got == expected, where


@pytest.mark.slow
def test_every_metric_on_two_processes_equals_one(two_process_run) -> None:
    _, results = two_process_run
    items = results["scenes"]
    single = metric_set_results(items, range(len(items)))
    assert single["per_image"]["names"] == [f"scene_{i}" for i in range(NUM_SAMPLES)]
    assert not single["boundary_iou"]["mBIoU"].isnan() and not single["calibration"]["ECE"].isnan()
    assert_identical(results["metric_set"], single, "metrics")


@pytest.mark.slow
def test_torch_distributed_sampler_would_count_a_sample_twice(two_process_run) -> None:
    # Why the datamodule brings its own validation sampler: torch's pads 7 samples to 8 by
    # repeating sample 0, which the summed matrix then counts twice.
    samples, results = two_process_run
    single, _ = single_process(samples)
    pred, label = samples[0]
    assert torch.equal(
        results["padded"]["confmat"],
        single + torch.from_numpy(fast_hist(label.numpy(), pred.numpy(), NUM_CLASSES)),
    )


# ---- Lightning level: trainer.validate over the smoke datamodule, 1 process vs 2 ("ddp") ----

EVERY_METRIC = "metrics=[miou,boundary_iou,boundary_f1,calibration,per_image]"


def lightning_confmat(devices: int, data_dir: str, out_path: str) -> None:
    """Validate a seeded random model on a 5-image validation set with every metric; rank 0 saves the
    epoch's summed confusion matrix, every val/ value logged and the per-image rows."""
    import lightning as L

    from src.utils.build import build_run
    from tests.conftest import SMOKE_DATA, compose_config
    from tests.helpers.models import randomize_batchnorm_statistics, randomize_score_layers

    class SaveResults(L.Callback):
        """Rank 0 saves what the module computed (summed over processes by each metric's compute)."""

        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.is_global_zero:
                metrics = pl_module.val_metrics
                scalars = {
                    k: v.cpu() for k, v in trainer.callback_metrics.items() if k.startswith("val/")
                }
                per_image = metrics.last(PerImageScores)
                torch.save(
                    {
                        "confmat": metrics.last(SegmentationMetrics)["confmat"].cpu(),
                        "scalars": scalars,
                        "per_image": {k: per_image[k] for k in ("names", "IoU", "valid")},
                    },
                    out_path,
                )

    # One image per process and batch in both runs: a validation batch is padded to its largest
    # image, so batch-mates would change what the model sees (and predicts) near the borders.
    overrides = [
        "debug=smoke",
        *SMOKE_DATA,
        f"paths.data_dir={data_dir}",
        f"data.root={data_dir}/synthetic_val5",
        "data.spec.num_val=5",
        f"data.batch_size={devices}",
        EVERY_METRIC,
    ]
    cfg = compose_config("train", overrides, Path(out_path).parent / "run")
    L.seed_everything(0)
    run = build_run(cfg, trainer=False)
    module, datamodule = run.module, run.datamodule
    # random score layers: every class predicted somewhere, so every metric has something to count
    randomize_score_layers(module.model, 0, std=0.1)
    randomize_batchnorm_statistics(module.model, 0)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        # "ddp" (a fresh process per rank), not "ddp_spawn": spawn hands CPU tensors to the children
        # through shared memory, so both ranks would update one confusion-matrix buffer.
        strategy="ddp" if devices > 1 else "auto",
        use_distributed_sampler=False,  # the datamodule's unpadded sampler shards validation
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SaveResults()],
    )
    trainer.validate(module, datamodule=datamodule, verbose=False)


@pytest.mark.slow
def test_lightning_validate_on_two_processes_equals_one(data_dir: Path, tmp_path: Path) -> None:
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"confmat_{devices}.pt"
        command = [sys.executable, __file__, str(devices), str(data_dir), str(out)]
        # one thread per process in both runs: a convolution's float sums depend on the thread count
        # (Lightning gives each DDP process cores / processes), and the metrics must see one model output
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
        )
        assert done.returncode == 0, done.stderr[-3000:]
        results[devices] = torch.load(out)
    voc = data_dir / "synthetic_val5" / "VOCdevkit" / "VOC2012"
    ids = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    assert len(ids) == 5
    from PIL import Image

    labelled = sum(
        int((np.array(Image.open(voc / "SegmentationClass" / f"{i}.png")) != 255).sum())
        for i in ids
    )
    assert int(results[1]["confmat"].sum()) == labelled  # every labelled pixel once
    assert torch.equal(results[2]["confmat"], results[1]["confmat"])
    single, double = results[1]["scalars"], results[2]["scalars"]
    # the loss is a mean of batch means: not a metric of the set
    keys = {k for k in single if not k.startswith("val/loss")}
    assert {
        "val/mBIoU",
        "val/mBF",
        "val/mBF_pooled",
        "val/ECE",
        "val/MCE",
        "val/mIoU_image",
    } <= keys
    assert keys == {k for k in double if not k.startswith("val/loss")}
    for key in sorted(keys):
        assert torch.equal(double[key].isnan(), single[key].isnan()), key
        assert torch.equal(double[key].nan_to_num(0.0), single[key].nan_to_num(0.0)), key
    assert 0 < float(single["val/mBIoU"]) < 1 and 0 < float(single["val/mBF"]) < 1
    rows = [results[devices]["per_image"] for devices in (1, 2)]
    assert rows[0]["names"] == rows[1]["names"] == sorted(ids)
    assert torch.equal(rows[0]["valid"], rows[1]["valid"]) and torch.equal(
        rows[0]["IoU"].isnan(), rows[1]["IoU"].isnan()
    )
    print(json.dumps({"pixels": labelled, "every_metric_equal": True}))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "tests"))
    lightning_confmat(int(sys.argv[1]), sys.argv[2], sys.argv[3])
