"""Mask files -> class indices: palette/grayscale PNGs, RGB colour PNGs, 0/255 binary masks, SBD's .mat."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from src.data.label_maps import LabelMap, check_num_classes, describe_unknown, optional_label_map
from src.data.palette import voc_palette
from src.utils.errors import UserError

# Modes whose pixel values already are class indices ("1" is a bilevel mask: 0/1).
INDEX_MODES = ("P", "L", "1", "I", "I;16")
COLOUR_MODES = ("RGB", "RGBA")
# SBD as released (Hariharan et al. 2011): benchmark_RELEASE/dataset/cls/<id>.mat, a MATLAB struct
# `GTcls` whose `Segmentation` field holds the class indices (0..20, no 255 borders).
MAT_SUFFIX = ".mat"


class SampleError(UserError):
    """A bad image or mask file; the message names the file and the problem."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker re-raises as SampleError("Caught SampleError in DataLoader worker ...
        # Original Traceback ... <module>.SampleError: <message>"); keep the one line a user needs.
        marker = f"{SampleError.__module__}.SampleError: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


def _code(rgb: np.ndarray) -> np.ndarray:
    """Pack (..., 3) uint8 colours into one int32 per colour."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _is_gray(rgb: np.ndarray) -> bool:
    """Tell whether every pixel of an (H,W,3+) image has R == G == B."""
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


class MaskDecoder:
    """Decode a mask file to uint8 (H,W) class indices.

    Palette ("P") and grayscale PNGs hold indices already; an RGB PNG is mapped through `palette`
    (one colour per class; VOC's colours when None) plus `ignore_color` -> ignore_index. With
    `binary_255`, 255 means class 1 (0/255 masks of two-class data) instead of ignore. A `.mat`
    file is read as SBD's `GTcls.Segmentation` (`read_sbd_mat`).

    With a `label_map` (src/data/label_maps.py) the mask files hold a dataset's label ids, not
    class indices: each id is mapped through the table, and an id it does not hold is reported
    with the file. Colour masks are refused then: a benchmark's colour PNGs do not decode to ids.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        palette: Sequence[Sequence[int]] | None = None,
        ignore_color: Sequence[int] | None = None,
        binary_255: bool = False,
        label_map: str | LabelMap | None = None,
    ) -> None:
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.binary_255 = bool(binary_255)
        self.label_map = optional_label_map(label_map)
        if self.label_map is not None:
            self._init_label_map(self.label_map)
            return
        if self.binary_255 and self.num_classes != 2:
            raise UserError(
                f"data.binary_255=true maps 0/255 masks to classes 0/1, so it needs data.num_classes=2 "
                f"(got {self.num_classes})"
            )
        colours = self._palette(palette, ignore_color)
        # what decoded masks depend on, for caches of mask statistics (class weights)
        self.cache_key = f"binary_255={self.binary_255};palette={colours.tolist()}"
        order = np.argsort(_code(colours))
        self._codes = _code(colours)[order]
        self._labels = np.array(
            [*range(self.num_classes), self.ignore_index][: len(colours)], dtype=np.uint8
        )[order]

    def _init_label_map(self, label_map: LabelMap) -> None:
        """Masks of label ids: no colour decoding (the palette only colours pictures)."""
        check_num_classes(label_map, self.num_classes)
        if self.binary_255:
            raise UserError(f"data.binary_255=true cannot be combined with data.label_map={label_map.name}")
        self.cache_key = f"label_map={label_map.name};ignore_index={self.ignore_index}"

    def _palette(
        self, palette: Sequence[Sequence[int]] | None, ignore_color: Sequence[int] | None
    ) -> np.ndarray:
        """Return the (num_classes [+1], 3) colours: the classes', then ignore_color's if any."""
        if palette is None:
            full = voc_palette()
            colours = full[: self.num_classes]
            ignore_color = full[self.ignore_index] if ignore_color is None else ignore_color
        else:
            colours = np.asarray(palette)
            if colours.shape != (self.num_classes, 3):
                raise UserError(
                    f"data.palette has shape {colours.shape}; expected {self.num_classes} [r, g, b] "
                    f"colours, one per class (data.num_classes={self.num_classes})"
                )
        if ignore_color is not None:
            colours = np.vstack([colours, np.asarray(ignore_color).reshape(1, -1)])
        if colours.shape[1] != 3 or colours.min() < 0 or colours.max() > 255:
            raise UserError(
                f"data.palette/data.ignore_color: expected [r, g, b] values in 0..255, got {colours.tolist()}"
            )
        codes = _code(colours)
        if len(np.unique(codes)) != len(codes):
            raise UserError(f"data.palette/data.ignore_color repeat a colour: {colours.tolist()}")
        return colours.astype(np.uint8)

    def __call__(self, path: Path) -> np.ndarray:
        """Return the class indices of the mask file at `path` (raises SampleError naming it)."""
        if self.label_map is not None:
            return self._map_label_ids(path)
        if Path(path).suffix.lower() == MAT_SUFFIX:
            mask = self._indices(read_sbd_mat(path), path)
        else:
            mask = self._decode_image(path)
        if self.binary_255:
            mask[mask == 255] = 1
        return mask

    def _map_label_ids(self, path: Path) -> np.ndarray:
        """Class indices of a mask file of label ids, through the label map."""
        mode, pixels = _read_mask_image(path)
        if mode not in INDEX_MODES:
            raise SampleError(
                f"mask {path} has mode {mode}; data.label_map={self.label_map.name} expects "
                f"{self.label_map.expected}, single-channel label ids (colour PNGs do not decode to ids)"
            )
        mask, unknown = self.label_map.to_classes(pixels, self.ignore_index)
        if unknown:
            raise SampleError(
                f"mask {path} holds label ids that data.label_map={self.label_map.name} does not "
                f"define: {describe_unknown(unknown)}; expected {self.label_map.expected}"
            )
        return mask

    def _decode_image(self, path: Path) -> np.ndarray:
        """Class indices of an image mask file, by its mode."""
        mode, pixels = _read_mask_image(path)
        if mode in COLOUR_MODES and self.binary_255 and _is_gray(pixels):
            mask = pixels[..., 0].copy()  # a 0/255 mask saved as RGB
        elif mode in COLOUR_MODES:
            mask = self.map_colours(pixels[..., :3], path)
        elif mode in INDEX_MODES:
            mask = self._indices(pixels, path)
        else:
            raise SampleError(
                f"mask {path} has mode {mode}; expected a palette or grayscale PNG of class indices "
                "or an RGB PNG in the configured palette"
            )
        return mask

    def _indices(self, pixels: np.ndarray, path: Path) -> np.ndarray:
        """uint8 indices from an index-mode image or an integer array; values outside 0..255 are reported."""
        if pixels.dtype == np.bool_ or pixels.dtype == np.uint8:
            return pixels.astype(np.uint8)
        if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
            values, counts = np.unique(pixels[(pixels < 0) | (pixels > 255)], return_counts=True)
            listed = ", ".join(
                f"{v} ({c} px)" for v, c in zip(values[:10], counts[:10], strict=False)
            )
            raise SampleError(f"mask {path} holds labels outside [0, 255]: {listed}")
        return pixels.astype(np.uint8)

    def map_colours(self, rgb: np.ndarray, path: Path | str = "<array>") -> np.ndarray:
        """Map (H,W,3) colours to class indices; an unknown colour raises naming the file and colour."""
        codes = _code(rgb)
        slot = np.clip(np.searchsorted(self._codes, codes), 0, len(self._codes) - 1)
        known = self._codes[slot] == codes
        if not known.all():
            unknown, counts = np.unique(codes[~known], return_counts=True)
            listed = ", ".join(
                f"({c >> 16}, {(c >> 8) & 255}, {c & 255}) ({n} px)"
                for c, n in zip(unknown[:10], counts[:10], strict=False)
            )
            raise SampleError(
                f"mask {path} holds colours that are not in data.palette (nor data.ignore_color): {listed}"
            )
        return self._labels[slot]


def _read_mask_image(path: Path) -> tuple[str, np.ndarray]:
    """(PIL mode, pixels) of a mask image file (SampleError naming an unreadable one)."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.mode, np.array(img)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise SampleError(f"cannot decode mask {path}: {err}") from None


def read_sbd_mat(path: Path) -> np.ndarray:
    """The integer (H,W) array in `GTcls.Segmentation` of an SBD `cls/<id>.mat` (SampleError naming a bad file)."""
    from scipy.io import loadmat  # scipy is imported only where SBD's .mat files are read

    try:
        content = loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as err:  # a corrupt file raises anything from OSError to IndexError in scipy
        raise SampleError(f"cannot decode mask {path}: not a readable MATLAB file ({err})") from None
    segmentation = getattr(content.get("GTcls"), "Segmentation", None)
    if not isinstance(segmentation, np.ndarray) or segmentation.ndim != 2:
        raise SampleError(
            f"mask {path} has no 2-D GTcls.Segmentation array; expected an SBD class mask "
            "(benchmark_RELEASE/dataset/cls/<id>.mat)"
        )
    if not (np.issubdtype(segmentation.dtype, np.integer) or segmentation.dtype == np.bool_):
        raise SampleError(
            f"mask {path}: GTcls.Segmentation holds {segmentation.dtype} values; expected integer class indices"
        )
    return segmentation
