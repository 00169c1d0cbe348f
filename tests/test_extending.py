"""docs/extending.md's checklists followed literally: a dataset format and a callback added from outside.

The dataset format (a made-up layout) and the callback are defined here, as a user's own package
would define them; their configs go where the checklists say, and a `debug=smoke` run trains on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest

from src.data.checks import check_split
from src.data.datamodule import SegDataModule
from src.data.dataset import SplitListing
from src.train import train
from src.utils.build import build_datamodule
from src.utils.errors import UserError
from tests.conftest import compose_config
from tests.helpers.toy_data import save_image, save_mask, toy_pair

NUM_CLASSES = 3
LAYOUT = "<root>/<split>/<stem>_img.png with its mask <stem>_lbl.png beside it"


class FlatPairsDataModule(SegDataModule):
    """A made-up layout: each split a folder holding `<stem>_img.png` and its mask `<stem>_lbl.png`."""

    def __init__(
        self,
        root: str,
        image_suffix: str = "_img.png",
        mask_suffix: str = "_lbl.png",
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.image_suffix, self.mask_suffix = image_suffix, mask_suffix

    def list_split(self, split: str) -> SplitListing:
        """The split folder's image/mask pairs; an image without its mask is noted as missing."""
        folder = self.root / split
        if not folder.is_dir():
            raise UserError(f"data.root={self.root}: no folder '{split}'; expected {LAYOUT}")
        pairs, missing = [], []
        for image in sorted(folder.glob(f"*{self.image_suffix}")):
            mask = folder / (image.name.removesuffix(self.image_suffix) + self.mask_suffix)
            if mask.is_file():
                pairs.append((image, mask))
            else:
                missing.append(f"split '{split}': no mask {mask.name} for image {image}")
        return SplitListing(split, pairs, missing)


class ValidationRecorder(L.Callback):
    """Appends each validation's `val/mIoU` to a JSON-lines file (rank 0 only)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """One line per validation epoch: the epoch and its val/mIoU."""
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        record = {
            "epoch": trainer.current_epoch,
            "mIoU": float(trainer.callback_metrics["val/mIoU"]),
        }
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")


# conf/data/<name>.yaml as the checklist writes it, here in the user's own config dir.
DATA_CONFIG = f"""\
defaults:
  - augment: crop
  - common/loader@_here_
  - _self_

_target_: tests.test_extending.FlatPairsDataModule
root: ${{paths.data_dir}}/flat_pairs
num_classes: {NUM_CLASSES}
class_names: [background, block, bar]
augment:
  crop_size: 256
  base_size: 256
"""


def write_flat_pairs(root: Path, counts: dict[str, int]) -> None:
    """`counts[split]` toy pairs of 48-60 px per split folder, in the made-up layout."""
    for offset, (split, count) in enumerate(counts.items()):
        (root / split).mkdir(parents=True)
        for index in range(count):
            image, mask = toy_pair(48 + index, 60 - index, NUM_CLASSES, seed=100 * offset + index)
            save_image(root / split / f"s{index:02d}_img.png", image)
            save_mask(root / split / f"s{index:02d}_lbl.png", mask)


@pytest.fixture
def user_conf(tmp_path: Path) -> Path:
    """The user's config dir: data/flat_pairs.yaml, joined to seglab's by hydra.searchpath."""
    conf = tmp_path / "my_conf"
    (conf / "data").mkdir(parents=True)
    (conf / "data" / "flat_pairs.yaml").write_text(DATA_CONFIG)
    return conf


def flat_pairs_config(user_conf: Path, root: Path, out: Path, *overrides: str):
    """The training config a user's command line gives: seglab's tree plus their data config."""
    return compose_config(
        "train",
        [f"hydra.searchpath=[file://{user_conf}]", "data=flat_pairs", f"data.root={root}",
         f"paths.log_dir={out}/logs", *overrides],
        out / "run",
    )  # fmt: skip


def test_a_dataset_format_and_a_callback_from_outside_train_a_smoke_run(
    user_conf: Path, tmp_path: Path
) -> None:
    root = tmp_path / "flat"
    write_flat_pairs(root, {"train": 12, "val": 3})  # 3 full batches of 4
    recorder = (
        "{_target_: tests.test_extending.ValidationRecorder, path: ${paths.output_dir}/val.jsonl}"
    )
    cfg = flat_pairs_config(
        user_conf, root, tmp_path, "debug=smoke", f"+callbacks.recorder={recorder}"
    )
    assert cfg.data.batch_size == 4 and cfg.data.ignore_index == 255  # the shared keys came along

    metrics = train(cfg)
    out = Path(cfg.paths.output_dir)
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["global_step"] == cfg.trainer.max_epochs * cfg.trainer.limit_train_batches
    assert {"val/IoU/background", "val/IoU/block", "val/IoU/bar"} <= set(summary["final"])
    # the callback saw every validation, with the values metrics.json reports
    records = [json.loads(line) for line in (out / "val.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(cfg.trainer.max_epochs))
    assert records[-1]["mIoU"] == pytest.approx(summary["final"]["val/mIoU"], abs=1e-6)
    assert max(r["mIoU"] for r in records) == pytest.approx(metrics["val/mIoU_best"], abs=1e-6)


def test_the_new_format_reports_a_wrong_root_and_bad_files_like_the_shipped_ones(
    user_conf: Path, tmp_path: Path
) -> None:
    root = tmp_path / "flat"
    write_flat_pairs(root, {"train": 3, "val": 2})
    cfg = flat_pairs_config(user_conf, tmp_path / "nowhere", tmp_path)
    with pytest.raises(
        UserError, match=r"data.root=.*nowhere: no folder 'train'; expected <root>/<split>/"
    ):
        build_datamodule(cfg.data)

    (root / "train" / "s01_lbl.png").unlink()  # an image without its mask
    bad = toy_pair(48, 60, NUM_CLASSES, seed=7)[1]  # the size of val's first image
    bad[:2] = 9  # a label outside [0, 3) that is not ignore_index
    save_mask(root / "val" / "s00_lbl.png", bad, fmt="gray")
    cfg = flat_pairs_config(user_conf, root, tmp_path)
    with pytest.raises(UserError, match=r"lists files that do not exist"):
        build_datamodule(cfg.data)
    datamodule = build_datamodule(cfg.data, splits=["val"])  # what check_dataset.py reads
    train_report, val_report = (check_split(datamodule, split) for split in ("train", "val"))
    assert train_report.num_pairs == 2 and train_report.faults == [
        f"split 'train': no mask s01_lbl.png for image {root / 'train' / 's01_img.png'}"
    ]
    assert len(val_report.faults) == 1 and "holds value 9 in 120 px" in val_report.faults[0]
