"""Check a dataset's labels before training: every image and mask read once, every fault listed.

    python scripts/check_dataset.py data=voc2012 data.root=/data/VOCdevkit [--out DIR] [--workers N]
    python scripts/check_dataset.py data=cityscapes data.root=/data/cityscapes

Takes the same Hydra overrides as `src/train.py` (the config is composed from conf/train.yaml).
Reports undecodable files, image/mask size mismatches, masks missing for listed images, values
outside [0, num_classes) other than ignore_index (file, value, pixel count), label ids that the
dataset's table does not define (data.label_map: Cityscapes, ADE20K; file, id, pixel count) and
empty splits, then
prints per-class pixel and image counts and writes them as a PNG bar chart (and JSON) into --out
(default: <paths.log_dir>/check_dataset/<time>/). Exits 1 when anything is wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hydra  # noqa: E402
import numpy as np  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.errors import HydraException  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import src  # noqa: E402, F401  (sets SEGLAB_ROOT for conf/paths)
from src.data.checks import SplitReport, check_split  # noqa: E402
from src.utils.errors import UserError, find_user_error  # noqa: E402

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
SPLIT_COLOURS = ((31, 119, 180), (255, 127, 14))


def compose_config(overrides: list[str]) -> DictConfig:
    """Compose conf/train.yaml with the user's overrides, exactly as training would."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def share(counts: np.ndarray) -> np.ndarray:
    """Counts as percentages of their total (zeros when the total is 0)."""
    total = counts.sum()
    return 100.0 * counts / total if total else np.zeros(len(counts))


def histogram_table(names: list[str], reports: list[SplitReport]) -> Table:
    """A rich table: per class and split, labelled pixels (count, %) and images containing it."""
    table = Table(title="class histogram (labelled pixels; ignore_index not counted)")
    table.add_column("id", justify="right")
    table.add_column("class")
    for r in reports:
        table.add_column(f"{r.split} pixels", justify="right")
        table.add_column(f"{r.split} %", justify="right")
        table.add_column(f"{r.split} images", justify="right")
    for c, name in enumerate(names):
        cells = [str(c), name]
        for r in reports:
            cells += [
                f"{r.pixels[c]:,}",
                f"{share(r.pixels)[c]:.2f}",
                f"{r.images[c]:,}/{r.num_pairs:,}",
            ]
        table.add_row(*cells)
    table.add_row("", "(ignored)", *[cell for r in reports for cell in (f"{r.ignored:,}", "", "")])
    return table


def _vertical_text(text: str, font: ImageFont.ImageFont) -> Image.Image:
    """The text rendered black on transparent, rotated to read bottom-up."""
    left, top, right, bottom = font.getbbox(text)
    label = Image.new("RGBA", (right - left + 2, bottom - top + 2), (0, 0, 0, 0))
    ImageDraw.Draw(label).text((-left + 1, -top + 1), text, fill=(0, 0, 0, 255), font=font)
    return label.rotate(90, expand=True)


def draw_histogram(names: list[str], reports: list[SplitReport], path: Path) -> None:
    """Write a PNG bar chart: per class, one bar per split for its share of labelled pixels."""
    font = ImageFont.load_default()
    labels = [_vertical_text(name[:22], font) for name in names]
    group, bar, plot_h, margin = 14 + 12 * len(reports), 12, 300, 50
    width = margin * 2 + group * len(names)
    bottom = max(label.height for label in labels) + 16
    canvas = Image.new("RGB", (max(width, 320), 30 + plot_h + bottom), "white")
    draw = ImageDraw.Draw(canvas)
    top = 30
    peak = max(max(float(share(r.pixels).max()) for r in reports), 1e-9)
    for tick in np.linspace(0, peak, 5):
        y = top + plot_h - int(plot_h * tick / peak)
        draw.line([(margin - 4, y), (width - margin, y)], fill=(225, 225, 225))
        draw.text((4, y - 6), f"{tick:.0f}%", fill="black", font=font)
    for c in range(len(names)):
        x0 = margin + c * group + 7
        for k, r in enumerate(reports):
            h = int(plot_h * share(r.pixels)[c] / peak)
            x = x0 + k * bar
            draw.rectangle(
                [x, top + plot_h - h, x + bar - 2, top + plot_h], fill=SPLIT_COLOURS[k % 2]
            )
        canvas.paste(labels[c], (x0, top + plot_h + 6), labels[c])
    draw.line([(margin - 4, top + plot_h), (width - margin, top + plot_h)], fill="black")
    for k, r in enumerate(reports):
        draw.rectangle([margin + 120 * k, 8, margin + 120 * k + 10, 18], fill=SPLIT_COLOURS[k % 2])
        draw.text(
            (margin + 120 * k + 14, 7), f"{r.split} ({r.num_pairs} images)", fill="black", font=font
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def run(overrides: list[str], out: Path | None, workers: int, console: Console) -> int:
    """Check both splits of the configured dataset; print, write the chart, return the exit code."""
    cfg = compose_config(overrides)
    datamodule = hydra.utils.instantiate(cfg.data, augment=None)
    datamodule.prepare_data()
    reports = [
        check_split(datamodule, split, workers)
        for split in (datamodule.train_split, datamodule.val_split)
    ]
    console.print(histogram_table(datamodule.class_names, reports))
    out = out or Path(cfg.paths.log_dir) / "check_dataset" / datetime.now().strftime(
        "%Y-%m-%d_%H-%M-%S"
    )
    draw_histogram(datamodule.class_names, reports, out / "class_histogram.png")
    summary = {
        r.split: {
            "pairs": r.num_pairs,
            "pixels": r.pixels.tolist(),
            "images": r.images.tolist(),
            "ignored": r.ignored,
            "faults": r.faults,
        }
        for r in reports
    }
    (out / "check_dataset.json").write_text(
        json.dumps({"classes": datamodule.class_names, "splits": summary}, indent=2)
    )
    console.print(f"chart: {out / 'class_histogram.png'}")
    faults = [f for r in reports for f in r.faults]
    for fault in faults:
        console.print(f"FAULT: {fault}", markup=False, highlight=False, soft_wrap=True)
    if faults:
        console.print(f"{len(faults)} fault(s) found", style="bold red")
        return 1
    console.print("no faults found", style="bold green")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse `--out`/`--workers` and the Hydra overrides; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides, as for src/train.py (data=..., data.root=...)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for class_histogram.png and check_dataset.json",
    )
    parser.add_argument("--workers", type=int, default=2, help="processes reading files")
    args = parser.parse_args(argv)
    console = Console(width=160)
    try:
        return run(args.overrides, args.out, args.workers, console)
    except (UserError, HydraException) as err:
        # instantiate wraps a constructor's UserError: show the user's mistake, not the wrapper
        message = find_user_error(err) or err
        console.print(f"seglab: error: {message}", markup=False, highlight=False, soft_wrap=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
