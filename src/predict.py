"""Predict masks for images with a checkpoint: palette PNGs and colour overlays.

python src/predict.py ckpt_path=<run>/checkpoints/last.ckpt input=<file | dir | glob> output=<dir>
                      [predict.mode=whole|slide] [predict.tta=true] [predict.device=cpu]
"""

from __future__ import annotations

import glob
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
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402
from rich.progress import track  # noqa: E402

from src.data.io import IMAGE_SUFFIXES, read_image  # noqa: E402
from src.data.palette import colorize, colour_table, save_palette_png  # noqa: E402
from src.data.transforms import normalize, pad_collate  # noqa: E402
from src.inference import InferenceOptions, segment_padded_batch  # noqa: E402
from src.utils.checkpoint import (  # noqa: E402
    InputConvention,
    input_convention,
    model_from_checkpoint,
    stored_data,
)
from src.utils.errors import UserError  # noqa: E402
from src.visualization import overlay  # noqa: E402

log = logging.getLogger(__name__)


def list_inputs(spec: str) -> list[Path]:
    """The image files named by a file, a folder (its images, sorted) or a glob pattern."""
    path = Path(spec).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif glob.has_magic(spec):
        files = sorted(
            Path(p)
            for p in glob.glob(str(path), recursive=True)
            if Path(p).suffix.lower() in IMAGE_SUFFIXES
        )
    else:
        raise UserError(
            f"input={spec} does not exist; expected an image file, a folder of images or a glob pattern"
        )
    if not files:
        raise UserError(f"input={spec} names no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    stems: dict[str, Path] = {}
    for file in files:
        if file.stem in stems:
            raise UserError(
                f"input={spec}: {stems[file.stem]} and {file} share the stem '{file.stem}', so their masks would overwrite each other"
            )
        stems[file.stem] = file
    return files


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


def checked_options(cfg: DictConfig) -> tuple[InferenceOptions, float, int]:
    """The inference options, overlay alpha and batch size of `cfg.predict`, checked."""
    if not cfg.get("ckpt_path"):
        raise UserError(
            "ckpt_path is required: python src/predict.py ckpt_path=<run>/checkpoints/last.ckpt input=... output=..."
        )
    if not cfg.get("input"):
        raise UserError(
            "input is required: an image file, a folder of images or a glob pattern (input=...)"
        )
    options = InferenceOptions.from_config(
        OmegaConf.to_container(cfg.predict, resolve=True), "predict"
    )
    alpha = float(cfg.predict.overlay_alpha)
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"predict.overlay_alpha={alpha}: expected a value in [0, 1]")
    batch_size = int(cfg.predict.batch_size)
    if batch_size < 1:
        raise UserError(f"predict.batch_size={batch_size}: expected a positive integer")
    return options, alpha, batch_size


def predict(cfg: DictConfig) -> list[Path]:
    """Write <output>/<stem>.png masks and <output>/overlays/<stem>.png for every input image; return the mask paths."""
    options, alpha, batch_size = checked_options(cfg)
    files = list_inputs(str(cfg.input))
    device = choose_device(str(cfg.predict.device))
    model, hparams = model_from_checkpoint(cfg.ckpt_path, list(cfg.trust.model_targets))
    model.to(device)
    data_cfg = stored_data(hparams)
    try:
        table = colour_table(palette_of(cfg, hparams), int(data_cfg.get("ignore_index", 255)))
    except ValueError as err:
        raise UserError(f"predict.palette: {err}") from None
    convention = input_convention(hparams)
    if cfg.predict.get("pad_multiple") is not None:
        if int(cfg.predict.pad_multiple) < 1:
            raise UserError(f"predict.pad_multiple={cfg.predict.pad_multiple}: expected a positive integer or null")
        convention = InputConvention(convention.normalize, int(cfg.predict.pad_multiple))
    output = Path(cfg.output)
    (output / "overlays").mkdir(parents=True, exist_ok=True)
    written = []
    predictions = predict_files(model, files, options, device, batch_size, convention)
    for path, image, mask in track(predictions, total=len(files), description="predicting"):
        target = output / f"{path.stem}.png"
        save_palette_png(target, mask, table)  # pixel values are the class indices, as in VOC
        Image.fromarray(overlay(image, colorize(mask, table), alpha)).save(
            output / "overlays" / f"{path.stem}.png"
        )
        written.append(target)
    log.info("%d masks written to %s", len(written), output)
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
