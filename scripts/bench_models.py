"""Forward+backward throughput of every model preset next to its bare torchvision backbone.

    python scripts/bench_models.py                       # 320x320, batch 4, width 1.0, CPU
    python scripts/bench_models.py --width 0.25 --iters 2 --presets fcn8s fcns

Prints two Markdown tables: images/s of preset and backbone measured in the same process (the
ratio is what the head costs), then parameters and GFLOPs per preset at --flops-size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
import torchvision
from hydra import compose, initialize_config_dir
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.models.backbones import VGGFeatures  # noqa: E402
from src.models.complexity import count_parameters, gflops  # noqa: E402

PRESETS = [
    "fcn32s",
    "fcn16s",
    "fcn8s",
    "fcn8s_compact",
    "fcns",
    "tv_fcn_resnet50",
    "tv_deeplabv3_resnet50",
]


def preset_model(name: str, width: float, num_classes: int) -> nn.Module:
    """Instantiate `model=<name>` as a training run composes it, at `width` where it applies."""
    overrides = [f"model={name}", f"data.num_classes={num_classes}"]
    if not name.startswith("tv_"):  # torchvision's models have width 1.0 only
        overrides.append(f"model.backbone.width={width}")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return hydra.utils.instantiate(cfg.model)


def bare_backbone(name: str, width: float) -> tuple[str, nn.Module]:
    """The backbone a preset runs on, without any head: torchvision's where width is 1.0."""
    if name.startswith("tv_"):
        # torchvision's segmentation models dilate layer3/layer4 (output stride 8).
        resnet = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])
        return "resnet50 (OS 8)", nn.Sequential(*list(resnet.children())[:-2])
    if width == 1.0:
        return "vgg16_bn.features", torchvision.models.vgg16_bn().features
    return f"vgg16_bn x{width}", VGGFeatures(batch_norm=True, width=width)


def images_per_second(model: nn.Module, batch: int, size: int, iters: int, warmup: int) -> float:
    """Training-mode forward+backward throughput on random images."""
    model.train()
    x = torch.randn(batch, 3, size, size)
    target = torch.randint(0, 21, (batch, size, size))

    def step() -> None:
        out = model(x)
        if isinstance(out, dict):
            out = out["out"] + out["aux"]
        if isinstance(out, list | tuple):
            out = out[-1]
        loss = F.cross_entropy(out, target) if out.shape[-2:] == (size, size) else out.mean()
        model.zero_grad(set_to_none=True)
        loss.backward()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return batch * iters / (time.perf_counter() - start)


def main() -> None:
    """Parse flags, run both tables."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=PRESETS, choices=PRESETS)
    parser.add_argument("--width", type=float, default=1.0, help="VGG width multiplier")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--flops-size", type=int, default=512)
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-flops", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; width {args.width}, "
        f"{args.num_classes} classes\n"
    )
    if not args.skip_speed:
        print(
            f"forward+backward, {args.size}x{args.size}, batch {args.batch}, {args.iters} iters\n"
        )
        print("| preset | images/s | backbone | backbone images/s | preset / backbone |")
        print("|---|---:|---|---:|---:|")
        backbone_speed: dict[str, float] = {}
        for name in args.presets:
            label, backbone = bare_backbone(name, args.width)
            if label not in backbone_speed:
                backbone_speed[label] = images_per_second(
                    backbone, args.batch, args.size, args.iters, args.warmup
                )
            del backbone
            model = preset_model(name, args.width, args.num_classes)
            speed = images_per_second(model, args.batch, args.size, args.iters, args.warmup)
            ratio = speed / backbone_speed[label]
            print(
                f"| {name} | {speed:.2f} | {label} | {backbone_speed[label]:.2f} | {ratio:.2f} |",
                flush=True,
            )
    if not args.skip_flops:
        size = args.flops_size
        print(f"\nsize at {size}x{size} (GFLOPs: one image, multiply-add = 2 FLOPs)\n")
        print("| preset | parameters | trainable | GFLOPs |")
        print("|---|---:|---:|---:|")
        for name in args.presets:
            model = preset_model(name, args.width, args.num_classes)
            total, trainable = count_parameters(model), count_parameters(model, trainable_only=True)
            flops = gflops(model, (size, size))
            print(
                f"| {name} | {total / 1e6:.2f}M | {trainable / 1e6:.2f}M | {flops:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
