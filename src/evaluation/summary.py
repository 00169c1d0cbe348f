"""The numbers of an evaluation as plain data: `test/<name>` values, the per-class table, the console table.

metrics.json, the console table and report.html all read these, so they show the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from src.metrics import MetricSet, SegmentationMetrics

# Per-class columns (`<stage>/<column>/<class>` in metrics.json), in this order, when their metric ran
CLASS_COLUMNS = ("IoU", "Acc", "Dice", "BIoU", "BF")
# Dataset-level rows of the summary table, when their metric ran
SUMMARY_KEYS = (
    "mIoU", "mAcc", "aAcc", "FWIoU", "mDice", "mBIoU", "mBF", "mBF_pooled", "ECE", "MCE", "mIoU_image",
)  # fmt: skip


def finite(value: Any) -> float | None:
    """A number for JSON: NaN (undefined) becomes None."""
    number = float(value)
    return number if math.isfinite(number) else None


def flat_metrics(
    metrics: MetricSet,
    results: Mapping[str, Mapping[str, Any]],
    class_names: Sequence[str],
    stage: str,
) -> dict[str, float | None]:
    """Every logged value as `<stage>/<name>`, plus Acc/<class> and Dice/<class> of the mIoU family."""
    flat = {f"{stage}/{k}": finite(v) for k, v in metrics.scalars(results, class_names).items()}
    confusion = metrics.last(SegmentationMetrics) or {}
    for kind in ("Acc", "Dice"):
        values = confusion[kind].reshape(-1) if kind in confusion else ()
        flat.update(
            {f"{stage}/{kind}/{c}": finite(v) for c, v in zip(class_names, values, strict=False)}
        )
    return flat


def summary_rows(flat: Mapping[str, float | None], stage: str) -> list[tuple[str, float | None]]:
    """(name, value) of the dataset-level scores present in `flat`."""
    return [(name, flat[f"{stage}/{name}"]) for name in SUMMARY_KEYS if f"{stage}/{name}" in flat]


def class_table(
    flat: Mapping[str, float | None], class_names: Sequence[str], stage: str
) -> tuple[list[str], list[list[float | None]]]:
    """The per-class columns present in `flat` and one row of values per class."""
    columns = [col for col in CLASS_COLUMNS if f"{stage}/{col}/{class_names[0]}" in flat]
    rows = [[flat[f"{stage}/{col}/{name}"] for col in columns] for name in class_names]
    return columns, rows


def format_score(name: str, value: float | None) -> str:
    """How tables show a score: a percentage with two decimals, ECE and MCE (errors in [0, 1]) with
    four decimals; '-' where undefined."""
    if value is None:
        return "-"
    return f"{value:.4f}" if name in ("ECE", "MCE") else f"{100 * value:.2f}"


def print_table(
    flat: Mapping[str, float | None], class_names: Sequence[str], title: str, stage: str
) -> None:
    """A rich table: the per-class columns (undefined: '-'), then the dataset-level scores."""
    from rich.console import Console
    from rich.table import Table

    columns, rows = class_table(flat, class_names, stage)
    table = Table(title=title)
    table.add_column("class")
    for column in columns:
        table.add_column(column, justify="right")
    for name, values in zip(class_names, rows, strict=True):
        table.add_row(
            name, *(format_score(column, v) for column, v in zip(columns, values, strict=True))
        )
    table.add_section()
    for name, value in summary_rows(flat, stage):
        table.add_row(name, format_score(name, value), *([""] * (len(columns) - 1)))
    Console().print(table)
