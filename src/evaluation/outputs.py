"""Everything src/eval.py writes beside metrics.json, and the images it shows TensorBoard.

output_dir/
  metrics.json          test/* values, the confusion matrix, reliability bins, the worst images' rows
  confusion_matrix.png  row-normalised, class names on the axes
  per_image.csv         every image's scores, worst first
  worst_images.png      the worst `worst_k` images: image | label | prediction | error | entropy
  reliability.png       the reliability diagram (when metrics include calibration)
  report.html           all of it on one self-contained page (report=true)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from src.callbacks.image_logger import image_writers
from src.evaluation.failures import Failure, failure_grid
from src.evaluation.per_image_table import write_per_image_csv
from src.evaluation.report import render_report
from src.utils.files import write_json_atomic


@dataclass
class Evaluation:
    """An evaluation's numbers (`payload`, metrics.json), its table and its pictures."""

    payload: dict[str, Any]
    per_image: list[dict[str, Any]]
    confusion_image: np.ndarray
    reliability_image: np.ndarray | None = None
    failures: list[Failure] = field(default_factory=list)

    def images(self) -> dict[str, np.ndarray]:
        """The pictures by file stem (also their TensorBoard tags under test/)."""
        images = {"confusion_matrix": self.confusion_image}
        if self.reliability_image is not None:
            images["reliability"] = self.reliability_image
        if self.failures:
            images["worst_images"] = failure_grid(self.failures)
        return images


def write_outputs(
    output_dir: Path, evaluation: Evaluation, class_names: Sequence[str], report: bool
) -> list[Path]:
    """Write the files listed in this module's docstring; return their paths."""
    written = [output_dir / "metrics.json", output_dir / "per_image.csv"]
    write_json_atomic(written[0], evaluation.payload)
    write_per_image_csv(written[1], evaluation.per_image, class_names)
    for stem, image in evaluation.images().items():
        path = output_dir / f"{stem}.png"
        Image.fromarray(image).save(path)
        written.append(path)
    if report:
        page = render_report(
            evaluation.payload,
            evaluation.confusion_image,
            evaluation.reliability_image,
            evaluation.failures,
        )
        written.append(output_dir / "report.html")
        written[-1].write_text(page, encoding="utf-8")
    return written


def log_images(loggers: Sequence[Any], evaluation: Evaluation, stage: str = "test") -> None:
    """Every picture to each logger that takes images (TensorBoard: `test/<name>` at step 0)."""
    for logger, write in image_writers(loggers):
        for stem, image in evaluation.images().items():
            write(logger, f"{stage}/{stem}", image, 0, 0)


def worst_rows(rows: Sequence[Mapping[str, Any]], count: int) -> list[dict[str, Any]]:
    """The first `count` rows of the worst-first table, as plain dicts for metrics.json."""
    return [dict(row) for row in rows[:count]]
