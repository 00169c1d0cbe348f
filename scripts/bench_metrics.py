"""Extra time per validation image of each metric, beside the model's forward time.

    python scripts/bench_metrics.py                              # 512x512, 21 classes, FCN-8s, CPU (+ CUDA if present)
    python scripts/bench_metrics.py --size 64 64 --width 0.0625 --reps 1 --devices cpu

Per device, one Markdown table: the model's forward pass on one image (`model=<preset>` as a run
builds it, eval mode, no grad), then each metric's `update` on that image's prediction in ms and
as a fraction of the forward pass. The label map is a scene of discs and rectangles (object
boundaries as in real data, not per-pixel noise); the prediction is that scene shifted and
repainted in places. `calibration` includes the softmax the module computes only for it; the
other metrics read the argmax, which validation computes anyway.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.metrics import (  # noqa: E402
    BoundaryFScore,
    BoundaryIoU,
    CalibrationError,
    PerImageScores,
    SegmentationMetrics,
)


def preset_model(name: str, width: float, num_classes: int) -> torch.nn.Module:
    """`model=<name>` as a training run composes it, random weights, at `width`."""
    overrides = [
        f"model={name}",
        f"data.num_classes={num_classes}",
        f"data.class_names=[{','.join(f'c{i}' for i in range(num_classes))}]",
        f"model.backbone.width={width}",
        "model.backbone.weights=null",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return hydra.utils.instantiate(cfg.model).eval()


def scene(
    height: int, width: int, num_classes: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(label, prediction) (H, W) int64: discs and rectangles; the prediction shifted, with extra blobs."""
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    label = torch.zeros(height, width, dtype=torch.long)
    prediction = torch.zeros_like(label)
    for target, count in ((label, 12), (prediction, 4)):
        for _ in range(count):
            cls = int(torch.randint(1, num_classes, (1,), generator=generator))
            cy, cx = (int(torch.randint(0, s, (1,), generator=generator)) for s in (height, width))
            radius = max(
                2, int(torch.randint(2, max(3, min(height, width) // 5), (1,), generator=generator))
            )
            target[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = cls
        if target is label:
            prediction.copy_(torch.roll(label, shifts=(2, -3), dims=(0, 1)))
    label[(yy % 97 < 3) & (label > 0)] = 255  # thin ignored stripes, as VOC's void outlines
    return label, prediction


def timed(function: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median wall time of `function` in ms (after one warm-up call), synchronising CUDA."""
    function()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def metric_steps(
    num_classes: int, label: torch.Tensor, logits: torch.Tensor
) -> dict[str, Callable[[], None]]:
    """One validation image's update for each metric (the defaults of conf/metrics/)."""
    prediction = logits.argmax(1)
    target = label.unsqueeze(0)
    miou = SegmentationMetrics(num_classes).to(label.device)
    biou = BoundaryIoU(num_classes).to(label.device)
    bf = BoundaryFScore(num_classes).to(label.device)
    calibration = CalibrationError(num_classes).to(label.device)
    per_image = PerImageScores(num_classes).to(label.device)
    return {
        "miou (confusion matrix)": lambda: miou.update(prediction, target),
        "boundary_iou": lambda: biou.update(prediction, target),
        "boundary_f1": lambda: bf.update(prediction, target),
        "calibration (+ softmax)": lambda: calibration.update(logits.softmax(1), target),
        "per_image": lambda: per_image.update(prediction, target, ["image"]),
    }


def bench_device(args: argparse.Namespace, device: torch.device) -> None:
    """Print one table for `device`."""
    height, width = args.size
    model = preset_model(args.model, args.width, args.classes).to(device)
    image = torch.randn(1, 3, height, width, device=device)
    label, prediction = (t.to(device) for t in scene(height, width, args.classes))
    with torch.no_grad():
        forward_ms = timed(lambda: model(image), device, args.reps)
    # logits whose argmax is the scene's prediction, so the metrics see realistic boundaries
    logits = torch.randn(1, args.classes, height, width, device=device)
    logits.scatter_add_(
        1, prediction[None, None], torch.full((1, 1, height, width), 6.0, device=device)
    )
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"\n### {name}: {width}x{height}, {args.classes} classes, {args.model} width {args.width}\n"
    )
    print("| step | ms / image | x forward |")
    print("|---|---:|---:|")
    print(f"| forward ({args.model}) | {forward_ms:.2f} | 1.00 |")
    for metric, step in metric_steps(args.classes, label, logits).items():
        ms = timed(step, device, args.reps)
        print(f"| {metric} | {ms:.2f} | {ms / forward_ms:.2f} |")


def main() -> None:
    """Parse the options and print a table per device."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--model", default="fcn8s")
    parser.add_argument("--width", type=float, default=1.0, help="backbone width multiplier")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for kind in args.devices:
        if kind == "cuda" and not torch.cuda.is_available():
            print("\n(no CUDA device: CPU only)")
            continue
        bench_device(args, torch.device(kind))


if __name__ == "__main__":
    main()
