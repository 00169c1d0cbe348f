"""Predict masks for images with a checkpoint: palette PNGs or label ids, and colour overlays.

python src/predict.py ckpt_path=<run>/checkpoints/last.ckpt input=<file | dir | glob> output=<dir>
                      [predict.format=palette|label_ids] [predict.overlays=false]
                      [predict.mode=whole|slide] [predict.tta=true] [predict.device=cpu]

Which files are read and where each mask goes: src/prediction_files.py.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

# `python src/predict.py` puts src/ on sys.path, not the repository root that holds the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hydra  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402
from PIL import Image  # noqa: E402
from rich.progress import track  # noqa: E402

from src.data.io import read_image  # noqa: E402
from src.data.label_maps import LabelMap, optional_label_map  # noqa: E402
from src.data.palette import colorize, colour_table  # noqa: E402
from src.data.transforms import normalize, pad_collate  # noqa: E402
from src.inference import MODES, InferenceOptions, segment_padded_batch  # noqa: E402
from src.prediction_files import (  # noqa: E402
    check_format,
    check_output,
    input_base,
    list_inputs,
    output_names,
    overlay_folder,
    write_mask,
)
from src.utils.checkpoint import (  # noqa: E402
    InputConvention,
    input_convention,
    model_from_checkpoint,
    stored_data,
)
from src.utils.errors import UserError  # noqa: E402
from src.visualization import overlay  # noqa: E402

log = logging.getLogger(__name__)


def choose_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; anything else as torch names it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"predict.device={name!r}: expected auto, cpu, cuda or cuda:<index>"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"predict.device={name!r} but CUDA is not available here; use predict.device=cpu"
        )
    return device


def batches(files: Sequence[Path], size: int) -> Iterator[list[Path]]:
    """Consecutive chunks of at most `size` files."""
    for start in range(0, len(files), size):
        yield list(files[start : start + size])


def predict_files(
    model: torch.nn.Module,
    files: Sequence[Path],
    options: InferenceOptions,
    device: torch.device,
    batch_size: int,
    convention: InputConvention,
) -> Iterator[tuple[Path, np.ndarray, np.ndarray]]:
    """(file, RGB image, class mask) per file, each predicted at its original size.

    Images are batched, padded and normalised exactly as validation batches are (mean colour,
    bottom/right, to a multiple of `convention.pad_multiple`), and every image is predicted on its
    own padded extent, so a mask here equals the prediction eval.py scores for the same file.
    """

    for chunk in batches(files, batch_size):
        images = [read_image(path) for path in chunk]
        samples = [
            {
                "image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
                "mask": torch.zeros(img.shape[:2], dtype=torch.uint8),
                "name": path.stem,
            }
            for img, path in zip(images, chunk, strict=True)
        ]
        batch = pad_collate(samples, multiple=convention.pad_multiple)
        with torch.inference_mode():
            masks = segment_padded_batch(
                model,
                normalize(batch["image"].to(device), convention.normalize),
                batch["sizes"].tolist(),
                options,
                convention.pad_multiple,
            )
        for path, image, mask in zip(chunk, images, masks, strict=True):
            yield path, image, mask.to(torch.uint8).cpu().numpy()


def palette_of(cfg: DictConfig, hparams: dict[str, Any]) -> Any:
    """predict.palette, else the checkpoint's dataset palette, else None (VOC's)."""
    if cfg.predict.get("palette") is not None:
        return OmegaConf.to_container(cfg.predict.palette)
    return stored_data(hparams).get("palette")


def checked_options(cfg: DictConfig) -> tuple[float, int, str]:
    """The overlay alpha, batch size and mask format of `cfg.predict`, checked before any model loads."""
    if not cfg.get("ckpt_path"):
        raise UserError(
            "ckpt_path is required: python src/predict.py ckpt_path=<run>/checkpoints/last.ckpt input=... output=..."
        )
    if not cfg.get("input"):
        raise UserError(
            "input is required: an image file, a folder of images or a glob pattern (input=...)"
        )
    alpha = float(cfg.predict.overlay_alpha)
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"predict.overlay_alpha={alpha}: expected a value in [0, 1]")
    batch_size = int(cfg.predict.batch_size)
    if batch_size < 1:
        raise UserError(f"predict.batch_size={batch_size}: expected a positive integer")
    multiple = cfg.predict.get("pad_multiple")
    if multiple is not None and int(multiple) < 1:
        raise UserError(f"predict.pad_multiple={multiple}: expected a positive integer or null")
    return alpha, batch_size, check_format(str(cfg.predict.format))


def inference_options(cfg: DictConfig, data_cfg: dict[str, Any]) -> InferenceOptions:
    """predict.* as InferenceOptions; what the command line leaves unset comes from the checkpoint's data.inference.

    conf/inference/default.yaml reads `data.inference` (eval.py's data config); predict.py has no
    data config, so the checkpoint's stored one stands in for it here.
    """
    with open_dict(cfg):
        cfg.data = {"inference": stored_inference_defaults(data_cfg)}
    return InferenceOptions.from_config(OmegaConf.to_container(cfg.predict, resolve=True), "predict")


def stored_inference_defaults(data_cfg: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's data.inference, only as plain checked values (a stored string is never an interpolation)."""
    stored = data_cfg.get("inference") or {}
    defaults: dict[str, Any] = {}
    if stored.get("mode") in MODES:
        defaults["mode"] = stored["mode"]
    for key in ("crop_size", "stride"):
        value = stored.get(key)
        if isinstance(value, int) or (isinstance(value, list) and all(isinstance(v, int) for v in value)):
            defaults[key] = value
    return defaults


def label_map_of(cfg: DictConfig, data_cfg: dict[str, Any]) -> LabelMap | None:
    """predict.label_map, else the checkpoint's data.label_map (None: masks are class indices)."""
    name = cfg.predict.get("label_map") or data_cfg.get("label_map")
    label_map = optional_label_map(name)
    if label_map is not None and cfg.predict.get("label_map"):
        # a label map given here must fit the model's classes
        num_classes = data_cfg.get("num_classes")
        if num_classes is not None and int(num_classes) != label_map.num_classes:
            raise UserError(
                f"predict.label_map={label_map.name} maps {label_map.num_classes} classes but the "
                f"checkpoint's model predicts {num_classes}"
            )
    return label_map


def predict(cfg: DictConfig) -> list[Path]:
    """Write a mask per input image (src/prediction_files.py) and its overlay beside; return the mask paths."""
    alpha, batch_size, fmt = checked_options(cfg)
    files = list_inputs(str(cfg.input))
    base, output = input_base(str(cfg.input), files), Path(cfg.output).expanduser()
    names = output_names(files, base)
    check_output(output, str(cfg.input), files, names)
    device = choose_device(str(cfg.predict.device))
    model, hparams = model_from_checkpoint(cfg.ckpt_path, list(cfg.trust.model_targets))
    model.to(device)
    data_cfg = stored_data(hparams)
    options = inference_options(cfg, data_cfg)
    label_map = label_map_of(cfg, data_cfg)
    try:
        table = colour_table(palette_of(cfg, hparams), int(data_cfg.get("ignore_index", 255)))
    except ValueError as err:
        raise UserError(f"predict.palette: {err}") from None
    convention = input_convention(hparams)
    if cfg.predict.get("pad_multiple") is not None:  # checked in checked_options
        convention = InputConvention(convention.normalize, int(cfg.predict.pad_multiple))
    overlays = overlay_folder(output) if cfg.predict.overlays else None
    written = []
    predictions = predict_files(model, files, options, device, batch_size, convention)
    for name, (_, image, mask) in zip(
        names, track(predictions, total=len(files), description="predicting"), strict=True
    ):
        write_mask(output / name, mask, fmt, table, label_map)
        if overlays is not None:
            (overlays / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(overlay(image, colorize(mask, table), alpha)).save(overlays / name)
        written.append(output / name)
    log.info("%d masks (%s) written to %s%s", len(written), fmt, output,
             f", overlays to {overlays}" if overlays else "")  # fmt: skip
    return written


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    try:
        predict(cfg)
    except UserError as err:
        raise SystemExit(f"seglab: error: {err}") from None


if __name__ == "__main__":
    main()
