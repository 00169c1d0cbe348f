"""Export a checkpoint's model to ONNX or TorchScript and check it against eager PyTorch.

    python scripts/export.py ckpt_path=<run>/checkpoints/last.ckpt format=onnx|torchscript
                             [output=model.onnx] [input=<image>] [exporter=dynamo|legacy] [opset=18]
                             [data=... data.root=...] [trust.model_targets=[mypkg.Net]]

The exported graph maps a normalised float32 image batch (N, 3, H, W) to logits (N, C, H, W), with
N, H and W dynamic (H, W >= 32, as for the eager model). Parity is checked on a real image (`input`,
default: the first validation image of the dataset that `data=` / `data.*` name, as for
`src/train.py`: the embedded dataset unless told otherwise; the data config a checkpoint stores is
never instantiated) and on a second size to exercise the dynamic axes; the max abs logit difference
is printed, and more than `tolerance` is an error.
ONNX needs the `export` extra (onnx, onnxscript for the dynamo exporter, onnxruntime for parity).
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402
from torch import nn  # noqa: E402

import src  # noqa: E402, F401  (sets SEGLAB_ROOT, which stored data paths may refer to)
from src.data.io import read_image  # noqa: E402
from src.data.transforms import normalize, pad_collate  # noqa: E402
from src.models.contract import main_logits  # noqa: E402
from src.utils.checkpoint import InputConvention, input_convention, model_from_checkpoint  # noqa: E402
from src.utils.errors import UserError  # noqa: E402

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
FORMATS = ("onnx", "torchscript")
EXPORTERS = ("dynamo", "legacy")


@dataclass
class TrustConfig:
    """`trust.*`: what a checkpoint may rebuild beyond seglab's own model classes."""

    model_targets: list[str] = field(default_factory=list)


@dataclass
class ExportConfig:
    """The command line's key=value options."""

    ckpt_path: str | None = None
    format: str = "onnx"
    # default: next to the checkpoint, <stem>.onnx / <stem>.torchscript.pt
    output: str | None = None
    # default: the first validation image of the data config `data=` / `data.*` compose
    input: str | None = None
    # torch.onnx's exporter: dynamo (torch.export + onnxscript) | legacy (TorchScript-based)
    exporter: str = "dynamo"
    opset: int = 18
    tolerance: float = 1e-4
    # model classes a checkpoint may rebuild besides seglab's own (conf/model/), e.g. [mypkg.Net]
    trust: TrustConfig = field(default_factory=TrustConfig)
    # the data config that gives the default example image: `data=<name>` and `data.<key>=...` overrides
    data_overrides: list[str] = field(default_factory=list)


class LogitsOnly(nn.Module):
    """The model with a plain tensor output (torchvision models return {'out', 'aux'})."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (N, C, H, W)."""
        return main_logits(self.model(image))


def logits_module(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The model itself when it returns a tensor (scriptable as is), else wrapped in LogitsOnly."""
    with torch.inference_mode():
        out = model(example)
    return LogitsOnly(model).eval() if isinstance(out, dict) else model


def parse_args(argv: list[str]) -> ExportConfig:
    """key=value arguments checked against ExportConfig; `data=`/`data.*` go to the data config."""
    data_overrides = [arg for arg in argv if arg.split("=", 1)[0].split(".", 1)[0] == "data"]
    own = [arg for arg in argv if arg not in data_overrides]
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(ExportConfig), OmegaConf.from_dotlist(own))
    except OmegaConfBaseException as err:
        raise UserError(
            f"{str(err).splitlines()[0]}; expected key=value among {', '.join(ExportConfig.__dataclass_fields__)}"
        ) from None
    cfg = ExportConfig(**OmegaConf.to_container(cfg))
    cfg.trust = TrustConfig(**cfg.trust)
    cfg.data_overrides = data_overrides
    if not cfg.ckpt_path:
        raise UserError(
            "ckpt_path is required: python scripts/export.py ckpt_path=<run>/checkpoints/last.ckpt format=onnx"
        )
    if cfg.format not in FORMATS:
        raise UserError(f"format={cfg.format!r}: expected one of {', '.join(FORMATS)}")
    if cfg.exporter not in EXPORTERS:
        raise UserError(f"exporter={cfg.exporter!r}: expected one of {', '.join(EXPORTERS)}")
    return cfg


def default_input(data_overrides: list[str]) -> Path:
    """The first validation image of the data config the overrides compose (as src/train.py would)."""
    from hydra import compose, initialize_config_dir

    from src.utils.build import build_datamodule

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=data_overrides)
    try:
        datamodule = build_datamodule(cfg.data, splits=[cfg.data.val_split])
        return datamodule.split_pairs(datamodule.val_split)[0][0]
    except UserError as err:
        raise UserError(f"no input= given and the data config cannot give an example image: {err}; pass input=<an image file>") from None


def real_input(path: Path, convention: InputConvention) -> torch.Tensor:
    """The image as validation sees it: padded (mean colour) to the checkpoint's multiple, normalised (1, 3, H, W)."""
    image = read_image(path)
    sample = {
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
        "mask": torch.zeros(image.shape[:2], dtype=torch.uint8),
        "name": path.stem,
    }
    batch = pad_collate([sample], multiple=convention.pad_multiple)
    return normalize(batch["image"], convention.normalize)


def resized(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The image at another size (bilinear), to exercise the dynamic axes."""
    return F.interpolate(image, size=(height, width), mode="bilinear", align_corners=False)


def trace_example(image: torch.Tensor) -> torch.Tensor:
    """The image resized so that neither side is a multiple of 32.

    seglab's models pad their input to a multiple of 32 behind a Python `if` (no padding needed ->
    return early). Tracing and torch.export fix that `if` to the branch the example takes: the
    padding branch is exact for every size (it pads by 0 at multiples of 32), the early return only
    for multiples of 32. So the example must take the padding branch.
    """
    height, width = image.shape[-2:]
    return resized(
        image, height + 1 if height % 32 == 0 else height, width + 1 if width % 32 == 0 else width
    )


def export_onnx(
    model: nn.Module, example: torch.Tensor, output: Path, exporter: str, opset: int
) -> None:
    """torch.onnx.export with dynamic batch, height and width."""
    names = {"input_names": ["image"], "output_names": ["logits"], "opset_version": opset}
    if exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            raise UserError(
                "exporter=dynamo needs onnxscript: pip install 'seglab[export]' (or use exporter=legacy)"
            ) from None
        batch = torch.export.Dim("batch", min=1, max=1024)
        height, width = (
            torch.export.Dim("height", min=32, max=8192),
            torch.export.Dim("width", min=32, max=8192),
        )
        torch.onnx.export(
            model,
            (example,),
            str(output),
            dynamo=True,
            dynamic_shapes=({0: batch, 2: height, 3: width},),
            verbose=False,
            **names,
        )
        return
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated upstream; it still works and needs no onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(output),
            dynamo=False,
            dynamic_axes={"image": axes, "logits": axes},
            **names,
        )


def export_torchscript(model: nn.Module, example: torch.Tensor, output: Path) -> None:
    """torch.jit.script (keeps Python control flow); torch.jit.trace on `example` where scripting fails."""
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # torch.jit is deprecated upstream in favour of torch.export
        try:
            module = torch.jit.script(model)
        except Exception as err:  # TorchScript rejects many Python constructs; tracing accepts them
            print(
                f"torch.jit.script failed ({type(err).__name__}); tracing on a {tuple(example.shape)} input instead"
            )
            module = torch.jit.trace(model, example)
        module.save(str(output))


def run_exported(fmt: str, output: Path, image: torch.Tensor) -> np.ndarray:
    """Logits of the exported file (onnxruntime for ONNX, torch.jit.load for TorchScript)."""
    if fmt == "torchscript":
        with torch.inference_mode():
            return torch.jit.load(str(output)).eval()(image).numpy()
    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            "the ONNX parity check needs onnxruntime: pip install 'seglab[export]'"
        ) from None
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: image.numpy()})[0]


def parity(model: nn.Module, fmt: str, output: Path, images: list[torch.Tensor]) -> list[float]:
    """Max abs logit difference between eager and exported, one per input."""
    diffs = []
    for image in images:
        with torch.inference_mode():
            eager = model(image).numpy()
        exported = run_exported(fmt, output, image)
        if exported.shape != eager.shape:
            raise UserError(
                f"exported model gives logits of shape {exported.shape} for input {tuple(image.shape)}; eager gives {eager.shape}"
            )
        diffs.append(float(np.abs(exported - eager).max()))
    return diffs


def export(cfg: ExportConfig) -> dict[str, Any]:
    """Export, check parity, print the figures; return {'output', 'shapes', 'max_abs_diff'}."""
    model, hparams = model_from_checkpoint(cfg.ckpt_path, cfg.trust.model_targets)
    image_file = Path(cfg.input) if cfg.input else default_input(cfg.data_overrides)
    image = real_input(image_file, input_convention(hparams))
    example = trace_example(image)
    model = logits_module(model, example)
    # Parity at the validation size, the export size and a third one: the dynamic axes at work.
    inputs = [image, example, resized(image, image.shape[2] * 3 // 2 + 5, image.shape[3] + 45)]
    suffix = ".onnx" if cfg.format == "onnx" else ".torchscript.pt"
    output = Path(cfg.output) if cfg.output else Path(cfg.ckpt_path).with_suffix(suffix)
    output.parent.mkdir(parents=True, exist_ok=True)
    if cfg.format == "onnx":
        export_onnx(model, example, output, cfg.exporter, cfg.opset)
    else:
        export_torchscript(model, example, output)
    diffs = parity(model, cfg.format, output, inputs)
    runtime = "onnxruntime" if cfg.format == "onnx" else "torch.jit"
    print(
        f"exported {output} ({cfg.format}{', ' + cfg.exporter + ' exporter' if cfg.format == 'onnx' else ''})"
    )
    for tensor, diff in zip(inputs, diffs, strict=True):
        print(
            f"parity ({runtime} vs eager, fp32, input {'x'.join(map(str, tensor.shape))}): max |logit diff| = {diff:.3e} (tolerance {cfg.tolerance:.0e})"
        )
    if max(diffs) > cfg.tolerance:
        raise UserError(
            f"exported model differs from eager PyTorch by {max(diffs):.3e} > tolerance={cfg.tolerance}"
        )
    return {"output": output, "shapes": [tuple(t.shape) for t in inputs], "max_abs_diff": diffs}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    try:
        export(parse_args(sys.argv[1:] if argv is None else argv))
    except UserError as err:
        raise SystemExit(f"seglab: error: {err}") from None


if __name__ == "__main__":
    main()
