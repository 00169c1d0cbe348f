"""report.html: one self-contained page (images inlined as data URIs, no script, no network).

Sections: the run (checkpoint, split, inference), the dataset-level scores, the per-class table
(IoU, Acc, Dice, and BIoU / BF when those metrics ran), the confusion matrix, the reliability
diagram (when calibration ran) and the worst images with their scores. Every number shown carries
its metrics.json key and exact value (`data-key`, `data-value`), so a test, or a reader's script,
can check the page against the file.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from src.evaluation.failures import PANEL_TITLES, Failure
from src.evaluation.summary import class_table, format_score, summary_rows

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.undefined { color: #999; }
figure { margin: 0 0 1.5em; }
img { max-width: 100%; image-rendering: pixelated; }
.panels { display: flex; gap: 4px; }
.panels figure { margin: 0; }
.panels figcaption, figure > figcaption { font-size: 0.85em; color: #555; }
"""
# Larger confusion matrices are shown as the image only (a 150-class table has 22,500 cells).
MAX_TABLE_CLASSES = 40


def png_data_uri(image: np.ndarray) -> str:
    """An RGB uint8 image as a `data:image/png;base64,...` URI."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _cell(key: str, value: float | int | None, shown: str) -> str:
    """A table cell that carries its metrics.json key and exact value."""
    data = "null" if value is None else repr(value)
    css = ' class="undefined"' if value is None else ""
    return f'<td data-key="{html.escape(key)}" data-value="{data}"{css}>{html.escape(shown)}</td>'


def _image(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def run_section(payload: Mapping[str, Any]) -> str:
    """What was evaluated, how."""
    inference = payload["inference"]
    items = {
        "checkpoint": payload["ckpt_path"],
        "split": payload["split"],
        "inference": f"mode={inference['mode']}, tta={inference['tta']}"
        + (f", scales={inference['scales']}, flip={inference['flip']}" if inference["tta"] else ""),
        "metrics": ", ".join(payload["metrics"]),
    }
    rows = "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items.items())
    return f'<section id="run"><h2>Run</h2><table>{rows}</table></section>'


def summary_section(payload: Mapping[str, Any], stage: str) -> str:
    """The dataset-level scores."""
    rows = "".join(
        f"<tr><th>{name}</th>{_cell(f'{stage}/{name}', value, format_score(name, value))}</tr>"
        for name, value in summary_rows(payload, stage)
    )
    note = (
        "<p>Scores in percent; ECE and MCE as fractions. mIoU_image is the mean over images of "
        "each image's mIoU, not the dataset's mIoU.</p>"
    )
    return f'<section id="summary"><h2>Scores</h2>{note}<table>{rows}</table></section>'


def class_section(payload: Mapping[str, Any], class_names: Sequence[str], stage: str) -> str:
    """The per-class table ('-': undefined, the class in neither labels nor predictions)."""
    columns, rows = class_table(payload, class_names, stage)
    head = "".join(f"<th>{c}</th>" for c in ["class", *columns])
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(
            _cell(f"{stage}/{col}/{name}", value, format_score(col, value))
            for col, value in zip(columns, values, strict=True)
        )
        + "</tr>"
        for name, values in zip(class_names, rows, strict=True)
    )
    return (
        f'<section id="per-class"><h2>Per class</h2><table><tr>{head}</tr>{body}</table></section>'
    )


def confusion_section(payload: Mapping[str, Any], image: np.ndarray) -> str:
    """The row-normalised confusion matrix image and, for up to MAX_TABLE_CLASSES classes, its counts."""
    names, matrix = payload["class_names"], payload["confusion_matrix"]
    parts = [
        '<section id="confusion-matrix"><h2>Confusion matrix</h2>',
        "<figure>" + _image(png_data_uri(image), "row-normalised confusion matrix"),
        "<figcaption>Rows: label, columns: prediction; each row in percent of its pixels.</figcaption></figure>",
    ]
    if len(names) <= MAX_TABLE_CLASSES:
        head = "".join(f"<th>{html.escape(n)}</th>" for n in ["label \\ prediction", *names])
        body = "".join(
            f"<tr><td>{html.escape(names[i])}</td>"
            + "".join(_cell(f"confusion_matrix/{i}/{j}", v, str(v)) for j, v in enumerate(row))
            + "</tr>"
            for i, row in enumerate(matrix)
        )
        parts.append(
            f"<details><summary>Pixel counts</summary><table><tr>{head}</tr>{body}</table></details>"
        )
    return "".join(parts) + "</section>"


def reliability_section(payload: Mapping[str, Any], image: np.ndarray) -> str:
    """The reliability diagram and its bins."""
    bins = payload["reliability"]
    rows = "".join(
        f"<tr><td>[{bins['edges'][k]:.3f}, {bins['edges'][k + 1]:.3f}{']' if k == len(bins['pixels']) - 1 else ')'}</td>"
        + _cell(f"reliability/pixels/{k}", bins["pixels"][k], f"{bins['pixels'][k]:.0f}")
        + "".join(
            _cell(
                f"reliability/{kind}/{k}",
                bins[kind][k],
                "-" if bins[kind][k] is None else f"{bins[kind][k]:.4f}",
            )
            for kind in ("accuracy", "confidence")
        )
        + "</tr>"
        for k in range(len(bins["pixels"]))
    )
    return (
        '<section id="reliability"><h2>Reliability diagram</h2><figure>'
        + _image(png_data_uri(image), "reliability diagram")
        + "</figure><table><tr><th>confidence bin</th><th>pixels</th><th>accuracy</th>"
        + f"<th>mean confidence</th></tr>{rows}</table></section>"
    )


def failures_section(failures: Sequence[Failure], class_names: Sequence[str]) -> str:
    """The worst images, each with its scores and its five panels."""
    items = []
    for index, failure in enumerate(failures):
        row = failure.row
        scores = "".join(
            f"<tr><th>{label}</th>{_cell(f'worst_images/{index}/{key}', row[key], shown(row[key]))}</tr>"
            for key, label, shown in (
                ("mIoU", "mIoU", lambda v: format_score("mIoU", v)),
                ("pixel_accuracy", "pixel accuracy", lambda v: format_score("aAcc", v)),
                ("valid_pixels", "valid pixels", str),
            )
        )
        present = [c for c in class_names if row[f"IoU/{c}"] is not None]
        per_class = "".join(
            f"<tr><th>IoU {html.escape(c)}</th>"
            f"{_cell(f'worst_images/{index}/IoU/{c}', row[f'IoU/{c}'], format_score('IoU', row[f'IoU/{c}']))}</tr>"
            for c in present
        )
        panels = "".join(
            f"<figure>{_image(png_data_uri(panel), title)}<figcaption>{title}</figcaption></figure>"
            for panel, title in zip(failure.panels, PANEL_TITLES, strict=True)
        )
        items.append(
            f'<article class="failure"><h3>#{row["rank"]} {html.escape(row["image"])}</h3>'
            f'<table>{scores}{per_class}</table><div class="panels">{panels}</div></article>'
        )
    intro = "<p>Ranked by the image's own mIoU, worst first (per_image.csv has every image).</p>"
    return f'<section id="worst-images"><h2>Worst images</h2>{intro}{"".join(items)}</section>'


def render_report(
    payload: Mapping[str, Any],
    confusion_image: np.ndarray,
    reliability_image: np.ndarray | None,
    failures: Sequence[Failure],
    stage: str = "test",
) -> str:
    """The whole page as one HTML string."""
    names = payload["class_names"]
    sections = [
        run_section(payload),
        summary_section(payload, stage),
        class_section(payload, names, stage),
        confusion_section(payload, confusion_image),
    ]
    if reliability_image is not None:
        sections.append(reliability_section(payload, reliability_image))
    sections.append(failures_section(failures, names))
    title = f"seglab evaluation: {payload['ckpt_path']} on {payload['split']}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>\n"
    )
