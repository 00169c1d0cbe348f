"""Forward+backward throughput of every model preset next to its bare backbone, and its size.

    python scripts/bench_models.py                       # 320x320, batch 4, width 1.0, CPU
    python scripts/bench_models.py --width 0.25 --iters 2 --presets fcn8s fcns
    python scripts/bench_models.py --presets unet_resnet34 segformer_mit_b0 --skip-speed

Prints two Markdown tables: images/s of preset and backbone measured in the same process (the
ratio is what the head costs), then parameters and GFLOPs per preset at --flops-size. The
backbone of an FCN is torchvision's VGG16-BN (or seglab's at --width), of a torchvision model its
dilated ResNet-50, of an smp preset its encoder. smp presets (the `smp` extra) are left out with
a note when the extra is not installed; --width does not apply to them or to torchvision's models.
Every model starts from random weights: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import importlib.util
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

SEGLAB_PRESETS = [
    "fcn32s",
    "fcn16s",
    "fcn8s",
    "fcn8s_compact",
    "fcns",
    "tv_fcn_resnet50",
    "tv_deeplabv3_resnet50",
]
# conf/model/ presets built by src/models/smp.py (the generic `smp` config is unet_resnet34)
SMP_PRESETS = [
    "unet_resnet34",
    "fpn_resnet50",
    "deeplabv3plus_resnet50",
    "segformer_mit_b0",
]
PRESETS = SEGLAB_PRESETS + SMP_PRESETS


def has_width(name: str) -> bool:
    """Whether `model.backbone.width` applies: seglab's VGG models only."""
    return name in SEGLAB_PRESETS and not name.startswith("tv_")


def available(names: list[str]) -> list[str]:
    """`names` without the smp presets when the smp extra is missing (said on stderr)."""
    if importlib.util.find_spec("segmentation_models_pytorch") is not None:
        return names
    left_out = [name for name in names if name in SMP_PRESETS]
    if left_out:
        print(f"smp is not installed (pip install -e '.[smp]'): left out {left_out}", file=sys.stderr)
    return [name for name in names if name not in SMP_PRESETS]


def preset_model(name: str, width: float, num_classes: int) -> nn.Module:
    """Instantiate `model=<name>` as a training run composes it, at `width` where it applies."""
    overrides = [f"model={name}", f"data.num_classes={num_classes}"]
    if has_width(name):  # torchvision's models have width 1.0 only, smp's none
        overrides.append(f"model.backbone.width={width}")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return hydra.utils.instantiate(cfg.model)


def bare_backbone(name: str, width: float, model: nn.Module) -> tuple[str, nn.Module]:
    """The backbone a preset runs on, without any head: torchvision's where width is 1.0."""
    if name in SMP_PRESETS:  # the encoder of the model itself (its features, no decoder)
        return f"{model.net.encoder.__class__.__name__} of {name}", model.net.encoder
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
    presets = available(args.presets)
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
        for name in presets:
            model = preset_model(name, args.width, args.num_classes)
            label, backbone = bare_backbone(name, args.width, model)
            if label not in backbone_speed:
                backbone_speed[label] = images_per_second(
                    backbone, args.batch, args.size, args.iters, args.warmup
                )
            del backbone
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
        for name in presets:
            model = preset_model(name, args.width, args.num_classes)
            total, trainable = count_parameters(model), count_parameters(model, trainable_only=True)
            flops = gflops(model, (size, size))
            print(
                f"| {name} | {total / 1e6:.2f}M | {trainable / 1e6:.2f}M | {flops:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
