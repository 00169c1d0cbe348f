"""Training throughput of seglab's full Lightning path against a bare PyTorch loop, same process.

    python scripts/bench_train.py [--steps 20] [--warmup 5] [--repeats 3] [--threads N]

Both paths train the same model (the configured FCN-8s, same initial weights), loss, AdamW and
poly LR on the same in-memory batches. The Lightning path is the one `src/train.py` runs: a
LightningDataModule, SegmentationModule (logging, the non-finite guard) and a Trainer with
loggers, checkpoints and the progress bar off. Only steps after the warm-up are timed, both
paths alternating `--repeats` times; the median images/s and their ratio are printed (goal on
CPU: Lightning >= 0.95 x bare). With CUDA it also measures 512x512 batches in fp32, bf16-mixed
and channels_last: images/s and peak GPU memory of both paths.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hydra  # noqa: E402
import lightning as L  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from src.models.contract import main_logits  # noqa: E402
from src.module import build_schedule  # noqa: E402
from src.utils.build import build_loss, build_module  # noqa: E402
from src.utils.lightning_console import quiet_lightning_notices  # noqa: E402

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class InMemoryData(L.LightningDataModule):
    """Pre-built batches served as they are (no decoding, no collation)."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.batches = batches

    def train_dataloader(self) -> DataLoader:
        """One already-collated batch per step."""
        return DataLoader(self.batches, batch_size=None, shuffle=False)


@dataclass
class StepTimes:
    """Seconds of one run's warm-up steps (a compiled model compiles in them) and of its timed steps."""

    warmup_s: float
    timed_s: float
    timed_images: int

    @property
    def images_per_s(self) -> float:
        """Throughput over the timed (post-warm-up) steps."""
        return self.timed_images / self.timed_s


@dataclass
class Measurement:
    """One path's run: its step times and the peak GPU memory it allocated (None on CPU)."""

    times: StepTimes
    peak_gib: float | None


class StepTimer(L.Callback):
    """Wall time of the warm-up steps and of the steps after them (CUDA-synchronised)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.first = self.start = self.end = 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Start the clocks at the first step and at the first timed step."""
        if batch_idx == 0:
            self.first = now(pl_module.device)
        if batch_idx == self.warmup:
            self.start = now(pl_module.device)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        """Stop it after every step; the last one counts."""
        self.end = now(pl_module.device)


def now(device: torch.device) -> float:
    """perf_counter after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def make_batches(
    n: int, batch: int, size: int, num_classes: int, device: torch.device
) -> list[dict]:
    """Normalised random images and masks with 5% ignored pixels, on `device`."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        mask = torch.randint(0, num_classes, (batch, size, size), generator=gen)
        mask[torch.rand(mask.shape, generator=gen) < 0.05] = 255
        image = torch.randn(batch, 3, size, size, generator=gen)
        out.append({"image": image.to(device), "mask": mask.to(device)})
    return out


def compose_run(width: float, num_classes: int) -> Any:
    """The training config a user would run, with the benchmark's model width and class count."""
    overrides = [
        f"model.backbone.width={width}",
        f"data.num_classes={num_classes}",
        f"data.class_names=[{','.join(f'c{i}' for i in range(num_classes))}]",
        "module.channels_last=false",
        "model_size_at=null",
        f"paths.output_dir={tempfile.gettempdir()}/seglab_bench_train",  # no Hydra run dir here
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def lightning_run(
    cfg: Any,
    model: nn.Module,
    batches: list,
    warmup: int,
    precision: str,
    channels_last: bool,
    compile: bool = False,
) -> StepTimes:
    """Step times of trainer.fit on the module train.py builds (`module.compile` as given)."""
    cfg = copy.deepcopy(cfg)
    cfg.module.channels_last = channels_last
    cfg.module.compile = compile
    module = build_module(cfg, model, build_loss(cfg.loss))
    timer = StepTimer(warmup)
    quiet_lightning_notices()  # as build_trainer does: no advertisement in the benchmark's output
    trainer = L.Trainer(
        accelerator=batches[0]["image"].device.type, devices=1, precision=precision, max_steps=len(batches),
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(module, datamodule=InMemoryData(batches))
    return step_times(batches, warmup, timer.first, timer.start, timer.end)


def bare_run(
    cfg: Any,
    model: nn.Module,
    batches: list,
    warmup: int,
    precision: str,
    channels_last: bool,
    compile: bool = False,
) -> StepTimes:
    """Step times of the same steps in a plain loop: forward, loss, backward, AdamW, poly LR."""
    device = batches[0]["image"].device
    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model.compile()  # as SegmentationModule does with module.compile=true
    loss_fn = build_loss(cfg.loss).to(device)
    optimizer = hydra.utils.instantiate(cfg.optim)(
        params=[p for p in model.parameters() if p.requires_grad]
    )
    poly = build_schedule(hydra.utils.instantiate(cfg.module.scheduler), optimizer, len(batches))
    dtype = torch.bfloat16 if precision == "bf16-mixed" else None
    first = start = now(device)
    for step, batch in enumerate(batches):
        if step == warmup:
            start = now(device)
        images = (
            batch["image"].contiguous(memory_format=torch.channels_last)
            if channels_last
            else batch["image"]
        )
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(images)
            loss = loss_fn(main_logits(out), batch["mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        poly.step()
        del out, loss  # as Lightning does: nothing of this step outlives it
    return step_times(batches, warmup, first, start, now(device))


def step_times(batches: list, warmup: int, first: float, start: float, end: float) -> StepTimes:
    """StepTimes from the clock at the first step, the first timed step and the end."""
    images = sum(b["image"].shape[0] for b in batches[warmup:])
    return StepTimes(warmup_s=start - first, timed_s=end - start, timed_images=images)


PATHS: dict[str, Callable[..., StepTimes]] = {"bare": bare_run, "lightning": lightning_run}


def measure(
    path: str, cfg: Any, template: nn.Module, batches: list, warmup: int, **mode: Any
) -> Measurement:
    """One run of `path` (bare | lightning) from a copy of `template`, with its peak GPU memory."""
    gc.collect()  # a previous run's Trainer holds its module in reference cycles: free it first
    on_gpu = batches[0]["image"].is_cuda
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    times = PATHS[path](cfg, copy.deepcopy(template), batches, warmup, **mode)
    peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None
    return Measurement(times, peak)


def compare(
    cfg: Any, template: nn.Module, batches: list, args: argparse.Namespace, **mode: Any
) -> dict:
    """Alternate both paths `repeats` times from the same initial weights; medians and peak memory."""
    runs: dict[str, list[float]] = {"bare": [], "lightning": []}
    peak: dict[str, float] = {}
    for repeat in range(args.repeats):
        order = list(PATHS) if repeat % 2 == 0 else list(PATHS)[::-1]  # neither path always first
        for name in order:
            result = measure(name, cfg, template, batches, args.warmup, **mode)
            runs[name].append(result.times.images_per_s)
            if result.peak_gib is not None:
                peak[name] = max(peak.get(name, 0.0), result.peak_gib)
    return {name: statistics.median(values) for name, values in runs.items()} | {"peak": peak}


def report(title: str, result: dict) -> None:
    """One line per path and the ratio."""
    print(f"  {title}")
    for name in ("bare", "lightning"):
        memory = f"   peak {result['peak'][name]:.2f} GiB" if name in result["peak"] else ""
        print(f"    {name:<10} {result[name]:8.1f} images/s{memory}")
    print(f"    ratio lightning/bare = {result['lightning'] / result['bare']:.3f}")


def default_run_breakdown(epochs: int, overrides: list[str]) -> list[Any]:
    """`python src/train.py` (the default run, its own data, callbacks and checkpoints) for `epochs`
    epochs with an EpochTimer; returns its per-epoch records."""
    from src.callbacks.epoch_timer import EpochTimer
    from src.utils.build import build_run, build_trainer

    out = tempfile.mkdtemp(prefix="seglab_breakdown_")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[f"trainer.max_epochs={epochs}", f"paths.output_dir={out}", "callbacks.progress_bar=null", *overrides],
        )
    L.seed_everything(cfg.seed, workers=True)
    run = build_run(cfg, trainer=False)
    timer = EpochTimer()
    trainer = build_trainer(cfg, extra_callbacks=[timer])
    trainer.fit(run.module, datamodule=run.datamodule)
    return timer.epochs


def report_breakdown(epochs: list[Any]) -> None:
    """One row per epoch: wall time and its parts, then the mean over the epochs after the first."""
    from src.callbacks.epoch_timer import PARTS

    print(f"  default run, per epoch (s): {'epoch':>5} {'wall':>7}" + "".join(f" {p:>12}" for p in PARTS))
    for record in epochs:
        print(f"  {'':26} {record.epoch:>5} {record.wall:>7.2f}" + "".join(f" {record.parts[p]:>12.2f}" for p in PARTS))
    steady = epochs[1:] or epochs
    mean = {p: statistics.mean(r.parts[p] for r in steady) for p in PARTS}
    wall = statistics.mean(r.wall for r in steady)
    print(f"  {'mean after the first':>32} {wall:>7.2f}" + "".join(f" {mean[p]:>12.2f}" for p in PARTS))


def main() -> None:
    """Parse arguments, run the CPU comparison and, with CUDA, the 512x512 GPU modes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--width", type=float, default=0.25, help="model.backbone.width on CPU")
    parser.add_argument("--gpu-batch", type=int, default=8)
    parser.add_argument("--gpu-width", type=float, default=1.0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument(
        "--breakdown-epochs", type=int, default=0,
        help="also run the default run (python src/train.py) this many epochs and print where each epoch's time goes",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the --breakdown-epochs run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    L.seed_everything(0, verbose=False)
    steps = args.warmup + args.steps

    cfg = compose_run(args.width, args.num_classes)
    template = hydra.utils.instantiate(cfg.model)
    print(
        f"seglab training throughput: {cfg.model._target_.rsplit('.', 1)[-1]} ({cfg.model.backbone.name} "
        f"x{args.width}), {args.num_classes} classes, AdamW + poly LR; {args.steps} timed steps after "
        f"{args.warmup} warm-up, median of {args.repeats}; torch {torch.__version__}, lightning {L.__version__}"
    )
    cpu = torch.device("cpu")
    batches = make_batches(steps, args.batch, args.size, args.num_classes, cpu)
    result = compare(cfg, template, batches, args, precision="32-true", channels_last=False)
    report(
        f"CPU ({torch.get_num_threads()} threads), fp32, batch {args.batch} at {args.size}x{args.size}",
        result,
    )
    print(
        f"    goal >= 0.95: {'met' if result['lightning'] / result['bare'] >= 0.95 else 'NOT met'}"
    )
    if args.breakdown_epochs:
        report_breakdown(default_run_breakdown(args.breakdown_epochs, args.overrides))

    if not torch.cuda.is_available():
        print(
            "  CUDA not available: skipping the 512x512 GPU runs (fp32, bf16-mixed, channels_last)"
        )
        return
    cfg = compose_run(args.gpu_width, args.num_classes)
    template = hydra.utils.instantiate(cfg.model)
    batches = make_batches(steps, args.gpu_batch, 512, args.num_classes, torch.device("cuda"))
    modes = {
        "fp32": ("32-true", False),
        "bf16-mixed": ("bf16-mixed", False),
        "fp32 + channels_last": ("32-true", True),
        "bf16-mixed + channels_last": ("bf16-mixed", True),
    }
    gpu = torch.cuda.get_device_name()
    for name, (precision, channels_last) in modes.items():
        result = compare(
            cfg, template, batches, args, precision=precision, channels_last=channels_last
        )
        report(f"{gpu}, {name}, width {args.gpu_width}, batch {args.gpu_batch} at 512x512", result)


if __name__ == "__main__":
    main()
