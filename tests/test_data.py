"""Datasets of every kind built on disk and loaded: VOC (2007/2012, SBD train_aug), folder, synthetic."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import hydra
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from src.data.augment import RandomResizeCrop
from src.data.datamodule import SegDataModule, VOCDataModule
from src.data.folder import FolderDataModule
from src.data.samplers import UnpaddedDistributedSampler
from src.utils.errors import UserError
from tests.conftest import compose_config
from tests.helpers.toy_data import write_folder, write_voc

SPLITS = {
    "train": ["2008_000001", "2008_000002", "2008_000003", "2008_000004"],
    "val": ["2008_000005", "2008_000006"],
}


def first_batch(dm: SegDataModule, split: str = "train") -> dict:
    """The first batch of a split, as the LightningModule sees it after transfer."""
    dm.setup()
    loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
    return dm.on_after_batch_transfer(next(iter(loader)), 0)


def png_indices(path: Path) -> np.ndarray:
    """A mask file's raw indices, read independently of seglab's decoder."""
    with Image.open(path) as img:
        return np.array(img)


def assert_batch_contract(batch: dict, n: int, num_classes: int) -> None:
    assert batch["image"].dtype == torch.float32 and batch["image"].shape[:2] == (n, 3)
    assert batch["mask"].dtype == torch.int64 and batch["mask"].shape == (
        n,
        *batch["image"].shape[2:],
    )
    assert batch["sizes"].shape == (n, 2) and len(batch["name"]) == n
    values = set(batch["mask"].unique().tolist())
    assert values <= set(range(num_classes)) | {255}


@pytest.mark.parametrize("where", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_voc_root_may_name_the_parent_the_devkit_or_the_year_folder(
    tmp_path: Path, where: str
) -> None:
    voc = write_voc(tmp_path, SPLITS)
    dm = VOCDataModule(
        root=str(tmp_path / where),
        num_classes=4,
        pad_multiple=32,
        batch_size=2,
        num_workers=0,
        augment=RandomResizeCrop(32, 32),
    )
    dm.check_layout()
    assert_batch_contract(first_batch(dm), 2, 4)
    assert first_batch(dm)["image"].shape[2:] == (32, 32)

    val = first_batch(dm, "val")
    assert val["name"] == SPLITS["val"]
    assert val["sizes"].tolist() == [[40, 48], [40, 48]]
    assert val["mask"].shape[1:] == (64, 64)  # padded to a multiple of 32 with ignore_index
    truth = png_indices(voc / "SegmentationClass" / f"{SPLITS['val'][0]}.png")
    assert np.array_equal(val["mask"][0, :40, :48].numpy(), truth)
    assert (val["mask"][:, 40:, :] == 255).all() and (val["mask"][:, :, 48:] == 255).all()


def test_a_wrong_voc_root_names_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"data.root=.*does not exist.*JPEGImages"):
        VOCDataModule(root=str(tmp_path / "nowhere"), num_classes=4, pad_multiple=32).check_layout()


def test_voc2007_config_composes_and_loads(tmp_path: Path) -> None:
    write_voc(tmp_path / "voc", SPLITS, year="2007", num_classes=21)
    overrides = [
        "data=voc2007",
        f"data.root={tmp_path / 'voc'}",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.augment.crop_size=32",
    ]
    cfg = compose_config("train", overrides, tmp_path / "run")
    dm = hydra.utils.instantiate(cfg.data)
    assert isinstance(dm, VOCDataModule) and dm.year == "2007" and dm.num_classes == 21
    dm.check_layout()
    assert_batch_contract(first_batch(dm), 4, 21)


def test_synthetic_set_loads_through_the_same_reader(smoke_cfg) -> None:
    dm = hydra.utils.instantiate(smoke_cfg().data)
    dm.prepare_data()
    assert isinstance(dm, VOCDataModule)
    assert_batch_contract(first_batch(dm), 4, 6)


def write_sbd(voc: Path, ids: list[str], value: int = 2) -> Path:
    """SegmentationClassAug with a constant-`value` grayscale mask per id (so its origin is visible)."""
    aug = voc / "SegmentationClassAug"
    aug.mkdir(exist_ok=True)
    for i in ids:
        Image.fromarray(np.full((40, 48), value, np.uint8)).save(aug / f"{i}.png")
    return aug


@pytest.mark.parametrize("with_list", [True, False])
def test_train_aug_adds_sbd_and_excludes_every_voc_val_image(
    tmp_path: Path, with_list: bool
) -> None:
    splits = {"train": ["t1", "t2"], "val": ["v1", "v2", "v3"]}
    voc = write_voc(tmp_path, splits, extra_masks=["s1", "s2"])
    aug = write_sbd(voc, ["t1", "s1", "s2", "v1", "v2"])  # SBD re-annotates some VOC val images
    if with_list:
        (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("t1\ns1\ns2\nv1\nv2\n")
    dm = VOCDataModule(root=str(tmp_path), num_classes=4, pad_multiple=32, use_sbd=True, batch_size=1, num_workers=0)
    assert dm.train_split == "train_aug"
    dm.check_layout()
    pairs = {image.stem: mask for image, mask in dm.split_pairs(dm.train_split)}
    val_ids = set((voc / "ImageSets/Segmentation/val.txt").read_text().split())
    assert set(pairs) == {"t1", "t2", "s1", "s2"}
    assert not set(pairs) & val_ids
    assert pairs["t1"] == aug / "t1.png" and pairs["s1"] == aug / "s1.png"
    assert pairs["t2"] == voc / "SegmentationClass" / "t2.png"  # not in SBD: VOC's own mask
    dm.setup()
    seen = [name for batch in dm.train_dataloader() for name in batch["name"]]
    assert sorted(seen) == sorted(pairs) and not set(seen) & val_ids


def test_use_sbd_without_the_masks_names_the_folder(tmp_path: Path) -> None:
    write_voc(tmp_path, SPLITS)
    dm = VOCDataModule(root=str(tmp_path), num_classes=4, pad_multiple=32, use_sbd=True)
    with pytest.raises(UserError, match=r"SegmentationClassAug.*data.sbd_dir"):
        dm.check_layout()


def folder_dm(root: Path, **kwargs) -> FolderDataModule:
    kwargs = {"num_classes": 2, "pad_multiple": 32, "batch_size": 2, "num_workers": 0, **kwargs}
    return FolderDataModule(root=str(root), **kwargs)


def test_folder_uses_split_files_when_present(tmp_path: Path) -> None:
    stems = [f"img{i}" for i in range(6)]
    write_folder(tmp_path, stems, splits={"train": stems[:4], "val": stems[4:]})
    dm = folder_dm(tmp_path)
    assert [p[0].stem for p in dm.split_pairs("train")] == stems[:4]
    assert [p[0].stem for p in dm.split_pairs("val")] == stems[4:]
    assert_batch_contract(first_batch(dm), 2, 2)


def test_folder_random_split_is_seeded_disjoint_and_complete(tmp_path: Path) -> None:
    stems = [f"img{i:02d}" for i in range(10)]
    write_folder(tmp_path, stems)

    def split(seed: int) -> tuple[list[str], list[str]]:
        dm = folder_dm(tmp_path, val_fraction=0.3, split_seed=seed)
        return [p[0].stem for p in dm.split_pairs("train")], [
            p[0].stem for p in dm.split_pairs("val")
        ]

    train, val = split(0)
    assert len(val) == 3 and sorted(train + val) == stems
    assert split(0) == (train, val)
    assert split(1) != (train, val)


def test_folder_with_one_split_file_or_duplicate_stems_is_refused(tmp_path: Path) -> None:
    write_folder(tmp_path, ["a", "b", "c"])
    (tmp_path / "train.txt").write_text("a\nb\n")
    with pytest.raises(UserError, match=r"train.txt exists but .*val.txt does not"):
        folder_dm(tmp_path).check_layout()
    (tmp_path / "train.txt").unlink()
    Image.new("RGB", (48, 40)).save(tmp_path / "images" / "a.jpg")
    with pytest.raises(
        UserError, match=r"a.jpg.*a.png.*share the stem 'a'|a.png.*a.jpg.*share the stem 'a'"
    ):
        folder_dm(tmp_path).check_layout()


@pytest.mark.parametrize("fmt", ["palette", "gray", "rgb", "binary255"])
def test_mask_formats_decode_to_the_written_indices(tmp_path: Path, fmt: str) -> None:
    palette = np.array([[10, 20, 30], [200, 100, 0]], np.uint8)
    kwargs = {"palette": palette.tolist(), "ignore_color": [255, 255, 255]} if fmt == "rgb" else {}
    if fmt == "rgb":  # write the ignore pixels in ignore_color too
        palette = np.vstack([palette, np.zeros((253, 3), np.uint8), [[255, 255, 255]]])
    truth = write_folder(
        tmp_path,
        ["a", "b", "c", "d"],
        mask_format=fmt,
        palette=palette,
        splits={"train": ["a", "b"], "val": ["c", "d"]},
    )
    dm = folder_dm(tmp_path, binary_255=fmt == "binary255", **kwargs)
    dataset = dm.dataset("val")
    for i, stem in enumerate(["c", "d"]):
        assert np.array_equal(dataset.load(i)[1], truth[stem])
    assert_batch_contract(first_batch(dm, "val"), 2, 2)


def test_binary_255_means_class_1_not_ignore(tmp_path: Path) -> None:
    write_folder(
        tmp_path, ["a", "b"], mask_format="binary255", splits={"train": ["a"], "val": ["b"]}
    )
    raw = png_indices(tmp_path / "masks" / "b.png")
    assert set(np.unique(raw)) == {0, 255}
    mask = folder_dm(tmp_path, binary_255=True).dataset("val").load(0)[1]
    assert np.array_equal(mask, (raw == 255).astype(np.uint8))
    # without the flag, 255 is VOC's ignore label: kept as is, counted nowhere
    assert np.array_equal(folder_dm(tmp_path).dataset("val").load(0)[1], raw)


def test_binary_255_needs_two_classes_and_palette_needs_one_colour_per_class(
    tmp_path: Path,
) -> None:
    with pytest.raises(UserError, match=r"data.binary_255=true .*data.num_classes=2 \(got 3\)"):
        folder_dm(tmp_path, num_classes=3, class_names=["a", "b", "c"], binary_255=True)
    with pytest.raises(UserError, match=r"data.palette has shape \(1, 3\); expected 2"):
        folder_dm(tmp_path, palette=[[0, 0, 0]])


def test_rgb_mask_with_an_unknown_colour_names_the_file_and_colour(tmp_path: Path) -> None:
    palette = np.array([[0, 0, 0], [255, 0, 0]], np.uint8)
    write_folder(tmp_path, ["a", "b"], splits={"train": ["a"], "val": ["b"]})
    rgb = palette[np.zeros((40, 48), np.uint8)]
    rgb[3:5, 7] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "masks" / "b.png")
    dataset = folder_dm(tmp_path, palette=palette.tolist()).dataset("val")
    with pytest.raises(
        UserError, match=r"b\.png holds colours that are not in data.palette.*\(1, 2, 3\) \(2 px\)"
    ):
        dataset.load(0)


def test_ddp_loaders_shard_training_and_count_every_val_sample_once(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    write_folder(
        tmp_path,
        [f"s{i}" for i in range(9)],
        splits={"train": ["s0", "s1", "s2", "s3"], "val": ["s4", "s5", "s6", "s7", "s8"]},
    )
    dm = folder_dm(tmp_path, batch_size=4, augment=RandomResizeCrop(32, 32))
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1)
    dm.setup()
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert train.batch_size == 2 and val.batch_size == 2
    assert (
        isinstance(train.sampler, DistributedSampler)
        and train.sampler.shuffle
        and train.sampler.seed == 7
    )
    assert train.sampler.rank == 1 and train.sampler.num_replicas == 2
    assert isinstance(val.sampler, UnpaddedDistributedSampler)
    assert [n for batch in val for n in batch["name"]] == ["s5", "s7"]
    dm.trainer = SimpleNamespace(world_size=3, global_rank=0)
    with pytest.raises(UserError, match=r"data.batch_size=4 is not divisible by the 3 processes"):
        dm.train_dataloader()
