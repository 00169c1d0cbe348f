"""Class weights computed once from the training masks, cached beside the dataset.

Methods (`loss.class_weights`): `median_frequency` (`auto`; Eigen & Fergus 2015, as in SegNet):
`w_c = median(freq) / freq_c` with `freq_c = pixels of c / pixels of the images containing c`;
`inverse`: `w_c = 1 / (K * freq_c)` with `freq_c = pixels of c / all pixels` and K the number of
classes present, so the mean weight over training pixels is 1; `enet` (Paszke et al. 2016):
`w_c = 1 / ln(1.02 + freq_c)`. Ignored pixels count nowhere, neither as class pixels nor as
image pixels. Classes absent from the training masks get weight 0 and a warning.
"""

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.losses.common import LossConfigError
from src.utils.files import write_json_atomic

log = logging.getLogger(__name__)

METHODS = ("median_frequency", "inverse", "enet")
ALIASES = {"auto": "median_frequency"}
CACHE_VERSION = 1


@dataclass
class MaskStats:
    """Pixel counts per class, and valid pixels of the images that contain each class."""

    pixels: np.ndarray  # (C,) int64
    image_pixels: np.ndarray  # (C,) int64


def mask_statistics(masks: Iterable[np.ndarray], num_classes: int, ignore_index: int) -> MaskStats:
    """Accumulate `MaskStats` over label arrays; labels outside the classes count as ignored."""
    pixels = np.zeros(num_classes, dtype=np.int64)
    image_pixels = np.zeros(num_classes, dtype=np.int64)
    stray = 0
    for mask in masks:
        flat = np.asarray(mask).reshape(-1).astype(np.int64)
        keep = (flat >= 0) & (flat < num_classes)
        stray += int((~keep & (flat != ignore_index)).sum())
        counts = np.bincount(flat[keep], minlength=num_classes)
        pixels += counts
        image_pixels += np.where(counts > 0, counts.sum(), 0)
    if stray:
        log.warning(
            "class weights: %d mask pixels hold labels outside [0, %d) and != ignore_index=%d; "
            "they were ignored",
            stray,
            num_classes,
            ignore_index,
        )
    return MaskStats(pixels, image_pixels)


def weights_from_statistics(stats: MaskStats, method: str) -> list[float]:
    """Class weights by `method` (see the module docstring); absent classes get 0."""
    method = ALIASES.get(method, method)
    present = stats.pixels > 0
    if not present.any():
        raise LossConfigError("class weights: the training masks contain no valid pixel")
    weights = np.zeros(len(stats.pixels), dtype=np.float64)
    if method == "median_frequency":
        freq = stats.pixels[present] / stats.image_pixels[present]
        weights[present] = np.median(freq) / freq
    elif method == "inverse":
        freq = stats.pixels[present] / stats.pixels.sum()
        weights[present] = 1.0 / (present.sum() * freq)
    elif method == "enet":
        freq = stats.pixels[present] / stats.pixels.sum()
        weights[present] = 1.0 / np.log(1.02 + freq)
    else:
        raise LossConfigError(_method_error(method))
    return weights.tolist()


def _method_error(value: object) -> str:
    options = ["null", "a list of num_classes floats", "auto", *METHODS]
    return f"loss.class_weights={value!r} is not valid; expected one of {options}"


def mask_fingerprint(paths: Sequence[str | os.PathLike]) -> str:
    """Hash of the mask files' names, sizes and mtimes: changes when the training set does."""
    h = hashlib.sha256()
    for p in sorted(str(p) for p in paths):
        st = os.stat(p)
        h.update(f"{Path(p).name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _cache_path(cache_dir: str | os.PathLike, split: str, method: str) -> Path:
    return Path(cache_dir) / f"class_weights-{split}-{method}.json"


def _load_cache(path: Path, key: dict) -> list[float] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("key") != key:
        return None
    return [float(w) for w in data["weights"]]


def _save_cache(path: Path, key: dict, weights: list[float], stats: MaskStats) -> None:
    payload = {
        "key": key,
        "weights": weights,
        "pixels": stats.pixels.tolist(),
        "image_pixels": stats.image_pixels.tolist(),
    }
    try:
        write_json_atomic(path, payload)  # parallel sweep jobs never read half a file
    except OSError as err:
        log.warning("class weights: could not write the cache %s (%s)", path, err)


def log_weights(
    weights: Sequence[float], method: str, split: str, class_names: Sequence[str] | None = None
) -> None:
    """Log the weights as a table and warn about classes absent from the training set."""
    names = list(class_names) if class_names else [str(i) for i in range(len(weights))]
    width = max(len("class"), *(len(n) for n in names))
    rows = [f"class weights ({method}, split {split!r}):", f"  {'class':<{width}}  weight"]
    rows += [f"  {n:<{width}}  {w:.4f}" for n, w in zip(names, weights, strict=True)]
    log.info("\n".join(rows))
    absent = [n for n, w in zip(names, weights, strict=True) if w == 0]
    if absent:
        log.warning(
            "class weights: class(es) %s do not occur in the %r training masks; weight 0",
            absent,
            split,
        )


def resolve_class_weights(
    spec: str | Sequence[float] | None,
    mask_paths: Sequence[str | os.PathLike],
    num_classes: int,
    ignore_index: int,
    cache_dir: str | os.PathLike | None,
    split: str,
    *,
    decode_mask: Callable[[Path], np.ndarray],
    class_names: Sequence[str] | None = None,
) -> list[float] | None:
    """Turn `loss.class_weights` into None or a list of `num_classes` floats.

    A method name is computed from the masks at `mask_paths` (once: the result is cached in
    `cache_dir` keyed by split, method, num_classes, ignore_index and a fingerprint of the files).
    `decode_mask` is the dataset's own decoder (a mask file -> class indices: RGB palettes, 0/255
    masks, SBD's .mat); its `cache_key` attribute, when present, joins the cache key.
    """
    if spec is None:
        return None
    if not isinstance(spec, str):
        weights = [float(w) for w in spec]
        if len(weights) != num_classes:
            raise LossConfigError(
                f"loss.class_weights has length {len(weights)}, expected num_classes={num_classes}"
            )
        return weights
    method = ALIASES.get(spec, spec)
    if method not in METHODS:
        raise LossConfigError(_method_error(spec))
    if not mask_paths:
        raise LossConfigError(
            f"loss.class_weights={spec!r} needs training masks; split {split!r} has none"
        )
    key = {
        "version": CACHE_VERSION,
        "split": split,
        "method": method,
        "num_classes": int(num_classes),
        "ignore_index": int(ignore_index),
        "fingerprint": mask_fingerprint(mask_paths),
        "decoder": getattr(decode_mask, "cache_key", None),
    }
    path = None if cache_dir is None else _cache_path(cache_dir, split, method)
    weights = None if path is None else _load_cache(path, key)
    if weights is None:
        stats = mask_statistics((decode_mask(Path(p)) for p in mask_paths), num_classes, ignore_index)
        weights = weights_from_statistics(stats, method)
        if path is not None:
            _save_cache(path, key, weights, stats)
    else:
        log.info("class weights: reusing %s", path)
    log_weights(weights, method, split, class_names)
    return weights
