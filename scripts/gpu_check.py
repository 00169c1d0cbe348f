"""GPU figures in one prepared run: training, eval and loss speed of full-width FCN-8s, and the AMX tests.

    bash scripts/gpu_check.sh [--out FILE] [--peak-tflops N] [--budget-s 480]
    bash scripts/gpu_check.sh --dry-run    (the same code paths on the CPU at tiny sizes)

Each figure is printed as it is measured, and the JSON (with a .log of the printed lines beside
it) is rewritten after each one (scripts/budgeted_report.py), so a run cut short keeps them.
  train  images/s, peak GPU memory and warm-up seconds of seglab's Lightning path next to a bare
         PyTorch loop of the same step (scripts/bench_train.py): VGG16-BN FCN-8s at width 1.0,
         21 classes, batch 8 at 512x512; fp32, bf16-mixed, + channels_last, + compile
  eval   images/s of whole-image prediction as src/eval.py runs it (a batch of 500x375 images
         padded to a multiple of 32, eval mode, inference_mode), fp32 and bf16 autocast
  loss   focal_dice forward+backward at 8x21x512x512, loss.fused=auto against false
  flops  model FLOPs per training step (forward+backward taken as 3x the forward FLOPs of
         src.models.complexity.gflops) over its time, and that over the device's dense bf16 peak
  amx    where the CPU has AMX-BF16 (the `amx_bf16` flag in /proc/cpuinfo; GPU servers often do),
         tests/test_cpu_bf16.py under pytest, slow tests included: its oneDNN bf16 regressions skip
         on every other CPU. Its output goes into the log, its counts into the JSON; a CPU
         without the flag gets one line saying so.
A time guard skips what would run past --budget-s and says so. The compiled mode runs last, so
its compile warm-up (reported on its own) cannot crowd out the other sections.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import re
import shlex
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import hydra  # noqa: E402
import lightning as L  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch import nn  # noqa: E402

from scripts.bench_losses import preset_loss  # noqa: E402
from scripts.bench_train import CONF_DIR, compose_run, make_batches, measure, now  # noqa: E402
from scripts.budgeted_report import BudgetedReport, gib, peak_gib, reset_peak  # noqa: E402
from src.data.transforms import padded_size  # noqa: E402
from src.inference import InferenceOptions, segment_padded_batch  # noqa: E402
from src.models.complexity import gflops  # noqa: E402
from src.utils.checkpoint import data_defaults  # noqa: E402

# the validation batches' padding, as the data config sets it
PAD_MULTIPLE = int(data_defaults()["pad_multiple"])

NUM_CLASSES = 21  # Pascal VOC
SECTIONS = ["train", "eval", "loss", "flops", "amx"]
CPUINFO = Path("/proc/cpuinfo")
AMX_TESTS = "tests/test_cpu_bf16.py"
AMX_RESERVE_S = 120.0  # what the AMX tests are expected to take (they train two smoke runs)
# pytest's closing line: "3 passed, 2 skipped in 12.34s" (between = signs with -q off)
PYTEST_COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's datasheets, matched against
# torch.cuda.get_device_name() in this order: the PCIe and NVL parts before their SXM family.
BF16_PEAK_TFLOPS = (
    (r"h100.*pcie", 756.0),
    (r"h[12]00.*nvl", 835.0),
    (r"h100|h200", 989.0),
    (r"a100", 312.0),
    (r"l40s", 362.0),
    (r"\bl4\b", 121.0),
    (r"\ba10\b", 125.0),
)
# name -> (trainer.precision, module.channels_last, module.compile)
TRAIN_MODES = {
    "fp32": ("32-true", False, False),
    "bf16-mixed": ("bf16-mixed", False, False),
    "bf16-mixed + channels_last": ("bf16-mixed", True, False),
    "bf16-mixed + channels_last + compile": ("bf16-mixed", True, True),
}


@dataclass(frozen=True)
class Sizes:
    """What a run measures at: model width, training crop and batch, steps, eval and loss shapes."""

    width: float
    side: int
    batch: int
    warmup: int
    steps: int
    eval_hw: tuple[int, int]
    loss_shape: tuple[int, int, int, int]
    compile_reserve_s: float  # what a compile warm-up is expected to add to an eager row


GPU_SIZES = Sizes(1.0, 512, 8, 5, 15, (375, 500), (8, NUM_CLASSES, 512, 512), 150.0)
# seconds on a CPU; 47x70 is padded, as 375x500 is
DRY_SIZES = Sizes(1 / 16, 64, 2, 1, 1, (47, 70), (2, NUM_CLASSES, 64, 64), 0.0)


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a device from BF16_PEAK_TFLOPS, None when its name is not in the table."""
    for pattern, tflops in BF16_PEAK_TFLOPS:
        if re.search(pattern, device_name.lower()):
            return tflops
    return None


@contextlib.contextmanager
def compile_backend(backend: str) -> Iterator[None]:
    """nn.Module.compile on `backend` (module.compile has no backend key; the dry run skips inductor)."""
    original = torch.nn.Module.compile
    if backend != "inductor":
        torch.nn.Module.compile = lambda self, *a, **kw: original(self, *a, backend=backend, **kw)
    try:
        yield
    finally:
        torch.nn.Module.compile = original


def train_row(
    report: BudgetedReport,
    sizes: Sizes,
    batches: list,
    cfg: Any,
    template: nn.Module,
    mode: str,
    path: str,
) -> dict:
    """One path of one training mode: images/s, peak memory, warm-up seconds, achieved TFLOP/s."""
    precision, channels_last, compile = TRAIN_MODES[mode]
    switches = {"precision": precision, "channels_last": channels_last, "compile": compile}
    result = measure(path, cfg, template, batches, sizes.warmup, **switches)
    flops, peak = report.data["flops"], report.data["flops"]["peak_bf16_tflops"]
    tflops = 3 * flops["forward_gflops_per_image"] * result.times.images_per_s / 1000
    row = {
        "images_per_s": result.times.images_per_s, "peak_gib": result.peak_gib,
        "warmup_s": result.times.warmup_s, "timed_s": result.times.timed_s,
        "tflops": tflops, "fraction_of_bf16_peak": None if peak is None else tflops / peak,
    }  # fmt: skip
    share = "" if peak is None else f" = {100 * tflops / peak:.1f}% of bf16 peak"
    report.say(
        f"train | {mode:<36} | {path:<9} | {row['images_per_s']:9.1f} images/s | peak "
        f"{gib(row['peak_gib'])} | warm-up {row['warmup_s']:.1f} s | {tflops:.3g} TFLOP/s{share}"
    )
    return row


def train_section(
    report: BudgetedReport, sizes: Sizes, device: torch.device, modes: list[str]
) -> None:
    """Both paths of each training mode in `modes`, from the same initial weights and batches."""
    cfg = compose_run(sizes.width, NUM_CLASSES)
    template = hydra.utils.instantiate(cfg.model)
    pool = make_batches(4, sizes.batch, sizes.side, NUM_CLASSES, device)  # cycled: less memory
    batches = [pool[i % len(pool)] for i in range(sizes.warmup + sizes.steps)]
    tensors = [tensor for batch in pool for tensor in batch.values()]
    batches_gib = sum(t.numel() * t.element_size() for t in tensors) / 2**30
    report.data["meta"]["train_batches_gib"] = batches_gib  # part of every train row's GPU peak
    for mode in modes:
        bare_first = list(TRAIN_MODES).index(mode) % 2 == 0  # neither path always first
        extra_s = sizes.compile_reserve_s if TRAIN_MODES[mode][2] else 0.0
        for path in ("bare", "lightning") if bare_first else ("lightning", "bare"):
            row = partial(train_row, report, sizes, batches, cfg, template, mode, path)
            report.item("train", (mode, path), row, extra_s)
        report.add_ratio(
            "train", mode, "lightning_over_bare", ("lightning", "bare"), "images_per_s"
        )


def compile_warmup(report: BudgetedReport, compiled: str, eager: str) -> None:
    """Warm-up seconds the compiled mode took beyond the same mode eager, per path: the compile cost."""
    rows, eager_rows = report.data["train"].get(compiled, {}), report.data["train"].get(eager, {})
    for path in ("bare", "lightning"):
        if path in rows and path in eager_rows:
            extra = rows[path]["warmup_s"] - eager_rows[path]["warmup_s"]
            rows.setdefault("compile_warmup_s", {})[path] = extra
            report.say(
                f"train | {compiled:<36} | {path:<9} | compile warm-up {extra:.1f} s beyond eager"
            )
    report.save()


def eval_row(
    report: BudgetedReport, sizes: Sizes, model: nn.Module, device: torch.device, bf16: bool
) -> dict:
    """Images/s of eval.py's prediction: a padded batch, whole image, argmax at each image's size."""
    height, width = sizes.eval_hw
    images = torch.randn(sizes.batch, 3, *padded_size(height, width, PAD_MULTIPLE), device=device)
    image_sizes = [(height, width)] * sizes.batch  # the batch pad_collate makes of such images
    settings = OmegaConf.load(CONF_DIR / "inference" / "default.yaml")  # eval.py's eval.* defaults
    options = InferenceOptions.from_config(settings, "eval")
    reset_peak(device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for step in range(sizes.warmup + sizes.steps):
            if step == sizes.warmup:
                start = now(device)
            segment_padded_batch(model, images, image_sizes, options, PAD_MULTIPLE)
        images_per_s = sizes.batch * sizes.steps / (now(device) - start)
    row = {"images_per_s": images_per_s, "peak_gib": peak_gib(device)}
    report.say(
        f"eval  | {'bf16 autocast' if bf16 else 'fp32':<36} | {width}x{height}, batch {sizes.batch} | "
        f"{images_per_s:9.1f} images/s | peak {gib(row['peak_gib'])}"
    )
    return row


def eval_section(report: BudgetedReport, sizes: Sizes, device: torch.device) -> None:
    """Eval throughput in fp32 and under bf16 autocast (eval.py with trainer.precision=bf16-mixed)."""
    model = hydra.utils.instantiate(compose_run(sizes.width, NUM_CLASSES).model).to(device).eval()
    for name, bf16 in (("fp32", False), ("bf16 autocast", True)):
        report.item("eval", (name,), partial(eval_row, report, sizes, model, device, bf16))


def loss_row(
    report: BudgetedReport, sizes: Sizes, device: torch.device, dtype: torch.dtype, fused: bool
) -> dict:
    """Milliseconds per focal_dice forward+backward and the peak memory it adds to its inputs."""
    shape = sizes.loss_shape
    loss = preset_loss("focal_dice", NUM_CLASSES, fused=fused).to(device)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=generator).to(device, dtype).requires_grad_()
    mask = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    mask[:, :, :4] = 255  # a border of ignored pixels, as in bench_losses.py
    mask = mask.to(device)
    for step in range(sizes.warmup + sizes.steps):
        if step == sizes.warmup:
            inputs_gib = (
                torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
            )
            reset_peak(device)
            start = now(device)
        logits.grad = None  # as zero_grad(set_to_none=True): backward allocates it again
        loss(logits, mask).backward()
    ms = 1000 * (now(device) - start) / sizes.steps
    peak = peak_gib(device)
    extra_mib = None if peak is None else 1024 * (peak - inputs_gib)
    dtype_name = str(dtype).removeprefix("torch.")
    label = f"{'x'.join(map(str, shape))} {dtype_name}, fused={'auto' if fused else 'false'}"
    extra = "n/a" if extra_mib is None else f"{extra_mib:.0f} MiB"
    report.say(f"loss  | focal_dice {label:<28} | {ms:9.2f} ms fwd+bwd | peak above inputs {extra}")
    return {"ms": ms, "extra_peak_mib": extra_mib}


def loss_section(report: BudgetedReport, sizes: Sizes, device: torch.device) -> None:
    """focal_dice on the fused engine and on the plain modules, for fp32 and bf16 logits."""
    for group, dtype in (("fp32 logits", torch.float32), ("bf16 logits", torch.bfloat16)):
        for key, fused in (("fused=auto", True), ("fused=false", False)):
            report.item(
                "loss", (group, key), partial(loss_row, report, sizes, device, dtype, fused)
            )
        report.add_ratio(
            "loss", group, "plain_over_fused_time", ("fused=false", "fused=auto"), "ms"
        )


def flops_summary(report: BudgetedReport) -> None:
    """The fastest training row's achieved TFLOP/s and its share of the peak."""
    flops = report.data["flops"]
    rows = [
        (paths[path]["tflops"], mode, path)
        for mode, paths in report.data["train"].items()
        for path in ("bare", "lightning")
        if path in paths
    ]
    if not rows:
        return report.say("flops | no training row was measured")
    tflops, mode, path = max(rows)
    peak = flops["peak_bf16_tflops"]
    flops["best"] = {"mode": mode, "path": path, "tflops": tflops}
    flops["best"]["fraction_of_bf16_peak"] = None if peak is None else tflops / peak
    share = "unknown peak, no fraction"
    if peak is not None:
        share = f"{100 * tflops / peak:.1f}% of the {peak:.0f} TFLOP/s dense bf16 peak"
        share += f" ({flops['peak_source']})"
    report.say(f"flops | best {tflops:.3g} TFLOP/s ({mode}, {path}): {share}")
    report.save()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny sizes, compile on aot_eager"
    )
    parser.add_argument(
        "--out", type=Path, help="the JSON file (default: in $OUT or logs/gpu_check/)"
    )
    parser.add_argument(
        "--peak-tflops", type=float, help="the dense bf16 peak (overrides the table)"
    )
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip what would run past it")
    parser.add_argument("--compile-backend", help="default: inductor (the dry run: aot_eager)")
    args = parser.parse_args(argv)
    if args.out is None:
        folder = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("logs/gpu_check")
        args.out = folder / ("gpu_check_dry_run.json" if args.dry_run else "gpu_check.json")
    args.compile_backend = args.compile_backend or ("aot_eager" if args.dry_run else "inductor")
    return args


def device_and_peak(args: argparse.Namespace) -> tuple[torch.device, str, dict[str, Any]]:
    """The device to measure on, its name, and its dense bf16 peak with where that came from."""
    if args.dry_run:
        device, name = torch.device("cpu"), f"CPU ({platform.machine()})"
    elif torch.cuda.is_available():
        device, name = torch.device("cuda"), torch.cuda.get_device_name()
    else:
        raise SystemExit("gpu_check: no CUDA device; --dry-run tries the script on the CPU")
    peak = (
        args.peak_tflops
        if args.peak_tflops is not None
        else None
        if args.dry_run
        else peak_tflops(name)
    )
    source = (
        "--peak-tflops" if args.peak_tflops is not None else "unknown" if peak is None else "table"
    )
    return device, name, {"peak_bf16_tflops": peak, "peak_source": source}


def run_meta(args: argparse.Namespace, sizes: Sizes, device_name: str) -> dict[str, Any]:
    """What the figures were measured on and at."""
    return {
        "device": device_name, "dry_run": args.dry_run, "sizes": asdict(sizes), "budget_s": args.budget_s,
        "compile_backend": args.compile_backend, "torch": torch.__version__, "lightning": L.__version__,
        "hydra": f"{hydra.__version__} from {Path(hydra.__file__).parent.parent}",
        "python": platform.python_version(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,  # fp32 convolutions run on TF32 when true
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }  # fmt: skip


def quiet_lightning() -> None:
    """Keep each Trainer's start-up banner and hints out of the output: they would bury the figures."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (".*does not have many workers.*", ".*no `val_dataloader`.*", ".*LeafSpec.*"):
        warnings.filterwarnings("ignore", message)


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The CPU's feature flags (the `flags` lines of /proc/cpuinfo); empty where it cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    return {
        flag
        for line in text.splitlines()
        if line.startswith("flags") and ":" in line
        for flag in line.split(":", 1)[1].split()
    }


def run_amx_tests(report: BudgetedReport, tests: str, markers: str, timeout_s: float) -> dict[str, Any]:
    """Run `tests` under pytest (`-m markers`; "" runs all); print its output and return its counts."""
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-m", markers, tests]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
    lines = (done.stdout + done.stderr).strip().splitlines()
    for line in lines:
        report.say(f"amx   | {line}")
    summary = lines[-1].strip("= ") if lines else ""
    counts = {kind.rstrip("s"): int(n) for n, kind in PYTEST_COUNTS.findall(summary)}
    shown = " ".join(shlex.quote(part) for part in command)
    return {"command": shown, "returncode": done.returncode, "summary": summary, **counts}


def amx_section(
    report: BudgetedReport, markers: str = "", cpuinfo: Path = CPUINFO, tests: str = AMX_TESTS
) -> None:
    """tests/test_cpu_bf16.py where the CPU has AMX-BF16; one printed line where it has not.

    pytest may use what is left of the budget once the item starts (the item guard keeps
    AMX_RESERVE_S of it); past that it is stopped and listed as an error.
    """
    if "amx_bf16" not in cpu_flags(cpuinfo):
        why = f"no amx_bf16 flag in {cpuinfo}: {tests} needs a CPU with AMX-BF16"
        report.data["amx"] = {"ran": False, "why": why}
        report.say(f"amx   | skipped: {why}")
        report.save()
        return
    def measure() -> dict[str, Any]:
        return run_amx_tests(report, tests, markers, report.budget_s - report.elapsed())

    result = report.item("amx", ("pytest",), measure, AMX_RESERVE_S)
    if result is not None:
        report.data["amx"]["ran"] = True
        report.save()
        if result["returncode"] != 0:
            report.note("errors", "amx / pytest", f"exit {result['returncode']}: {result['summary']}")


def model_flops(report: BudgetedReport, sizes: Sizes) -> None:
    """Forward GFLOPs per image, counted on the meta device (no memory, no time)."""
    model = hydra.utils.instantiate(compose_run(sizes.width, NUM_CLASSES).model).to("meta")
    forward = gflops(model, (sizes.side, sizes.side))
    report.data["flops"].update(
        forward_gflops_per_image=forward, train_step_tflop=3 * forward * sizes.batch / 1000
    )


def banner(device_name: str, sizes: Sizes, budget_s: float, peak: dict[str, Any]) -> str:
    """The first line printed: device, versions, what is measured, the budget and the peak."""
    tflops = peak["peak_bf16_tflops"]
    known = "unknown peak" if tflops is None else f"{tflops:.0f} TFLOP/s ({peak['peak_source']})"
    return (
        f"gpu_check: {device_name} | torch {torch.__version__}, lightning {L.__version__} | "
        f"FCN-8s vgg16_bn x{sizes.width:g}, {NUM_CLASSES} classes, batch {sizes.batch} at "
        f"{sizes.side}x{sizes.side} | {sizes.warmup} warm-up + {sizes.steps} timed steps | "
        f"budget {budget_s:.0f} s | bf16 peak: {known}"
    )


def main(argv: list[str] | None = None) -> None:
    """Measure the sections in order (compile last) within the budget; write the JSON throughout."""
    args = parse_args(argv)
    quiet_lightning()
    L.seed_everything(0, verbose=False)
    sizes = DRY_SIZES if args.dry_run else GPU_SIZES
    device, name, peak = device_and_peak(args)
    report = BudgetedReport(args.out, args.budget_s, SECTIONS, run_meta(args, sizes, name))
    report.data["flops"].update(peak)
    report.say(banner(name, sizes, args.budget_s, peak))
    model_flops(report, sizes)
    eager, compiled = list(TRAIN_MODES)[:-1], list(TRAIN_MODES)[-1:]
    try:
        train_section(report, sizes, device, eager)
        eval_section(report, sizes, device)
        loss_section(report, sizes, device)
        # before the compiled mode, whose warm-up may use up the budget; the dry run skips the slow ones
        amx_section(report, markers="not slow" if args.dry_run else "")
        with compile_backend(args.compile_backend):
            train_section(report, sizes, device, compiled)
        compile_warmup(report, compiled[0], eager[-1])
    except KeyboardInterrupt:  # gpu_check.sh's hard stop sends SIGINT: keep what was measured
        report.note("errors", "run", "interrupted by the hard stop (GPU_CHECK_TIMEOUT_S)")
    flops_summary(report)
    skipped = ", ".join(entry["item"] for entry in report.data["skipped"]) or "none"
    report.say(f"gpu_check: done in {report.elapsed():.0f} s; skipped: {skipped}; JSON {args.out}")


if __name__ == "__main__":
    main()
