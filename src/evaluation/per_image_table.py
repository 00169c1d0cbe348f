"""per_image.csv: each image's scores from `PerImageScores`, worst first.

Columns: rank, image, mIoU (over the classes in the image's label or prediction), pixel_accuracy,
valid_pixels, then IoU/<class> for every class. An undefined score (a class in neither map, an
image without valid pixels) is an empty cell; images without an mIoU come last.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from src.evaluation.summary import finite


def per_image_rows(results: Mapping[str, Any], class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One dict per image (None where undefined), sorted by mIoU ascending, then by name."""
    rows = []
    iou = results["IoU"].reshape(len(results["names"]), len(class_names))
    for index, name in enumerate(results["names"]):
        row = {
            "image": name,
            "mIoU": finite(results["mIoU"].reshape(-1)[index]),
            "pixel_accuracy": finite(results["pixel_accuracy"].reshape(-1)[index]),
            "valid_pixels": int(results["valid"].reshape(-1)[index]),
        }
        row.update({f"IoU/{c}": finite(v) for c, v in zip(class_names, iou[index], strict=True)})
        rows.append(row)
    rows.sort(key=lambda row: (row["mIoU"] is None, row["mIoU"] or 0.0, row["image"]))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def write_per_image_csv(
    path: Path, rows: Sequence[Mapping[str, Any]], class_names: Sequence[str]
) -> None:
    """Write the rows (worst first) with a header; undefined scores as empty cells."""
    columns = [
        "rank",
        "image",
        "mIoU",
        "pixel_accuracy",
        "valid_pixels",
        *(f"IoU/{c}" for c in class_names),
    ]
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row[key] is None else row[key] for key in columns})
