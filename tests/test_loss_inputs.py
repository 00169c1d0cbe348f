"""What the loss accepts: any user term (with or without an `__init__`), masks of any integer dtype,
and `instantiate(cfg.loss)` without Lightning."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from src.losses import BCELoss, CELoss, DiceLoss, FocalLoss, LovaszLoss, OHEMLoss, TverskyLoss
from src.metrics import SegmentationMetrics, confusion_matrix
from src.utils.instantiate import shared_arguments
from src.utils.loss_config import composite_loss
from tests.conftest import ROOT
from tests.helpers.loss_checks import one_thread, preset  # noqa: F401 (one_thread: autouse fixture)
from tests.helpers.loss_reference import II, make_case

C = 5
SHARED = {"ignore_index": II, "num_classes": C, "class_weights": [1.0, 2.0, 0.5, 1.0, 3.0]}


# ---------------------------------------------------------------- a term gets what it names


class MeanMaxProb(nn.Module):
    """The simplest user term: no `__init__` of its own (nn.Module's takes *args, **kwargs)."""

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return 1 - logits.softmax(1).amax(1).mean()


class KeywordsOnly(nn.Module):
    """A term that takes everything through **kwargs and keeps what it was given."""

    def __init__(self, scale: float = 1.0, **kwargs) -> None:
        super().__init__()
        self.scale, self.given = scale, kwargs

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.scale * logits.mean()


class NamesTwo(nn.Module):
    """A term that names two of the shared arguments, one of them keyword-only."""

    def __init__(self, ignore_index: int, *, num_classes: int) -> None:
        super().__init__()
        self.ignore_index, self.num_classes = ignore_index, num_classes

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return logits.mean()


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        (MeanMaxProb, {}),
        (KeywordsOnly, {}),
        (NamesTwo, {"ignore_index": II, "num_classes": C}),
        (CELoss, {"ignore_index": II, "class_weights": SHARED["class_weights"]}),
        (FocalLoss, SHARED),
    ],
)
def test_a_term_gets_only_the_shared_arguments_it_names(term: type, expected: dict) -> None:
    assert shared_arguments(f"{term.__module__}.{term.__qualname__}", SHARED) == expected


def test_terms_without_init_or_with_kwargs_join_the_composite() -> None:
    loss = composite_loss(
        II, C, SHARED["class_weights"],
        ce={"_target_": "src.losses.CELoss"},
        mine={"_target_": f"{__name__}.MeanMaxProb", "weight": 0.3},
        loose={"_target_": f"{__name__}.KeywordsOnly", "scale": 2.0, "weight": 0.5},
    )  # fmt: skip
    assert loss.terms["loose"].given == {} and loss.terms["loose"].scale == 2.0
    logits, target = make_case((2, C, 6, 7), seed=3)
    total = loss(logits, target)
    mine = 1 - logits.softmax(1).amax(1).mean()
    weights = torch.tensor(SHARED["class_weights"])
    ce = CELoss(II, weights)(logits, target)
    torch.testing.assert_close(loss.last_terms["mine"], mine)
    torch.testing.assert_close(total, ce + 0.3 * mine + 0.5 * 2.0 * logits.mean())


# ---------------------------------------------------------------- masks of any integer dtype

MASK_DTYPES = [torch.uint8, torch.int16, torch.int32]
TERMS = {
    "ce": lambda: CELoss(),
    "ce_label_smoothing": lambda: CELoss(label_smoothing=0.1),
    "ce_sum": lambda: CELoss(normalize=False),
    "focal": lambda: FocalLoss(gamma=2.0, alpha=0.25),
    "focal_sigmoid": lambda: FocalLoss(mode="sigmoid"),
    "bce": lambda: BCELoss(),
    "dice": lambda: DiceLoss(),
    "tversky": lambda: TverskyLoss(gamma=0.75),
    "lovasz": lambda: LovaszLoss(per_image=True),
    "ohem": lambda: OHEMLoss(thresh=0.7, min_kept=10),
}
PRESETS = ["ce", "bce", "focal", "dice", "ce_dice", "focal_dice", "tversky", "lovasz", "ce_lovasz", "ohem"]


def value_and_grad(loss: nn.Module, logits: torch.Tensor, mask: torch.Tensor) -> tuple:
    """The loss and d loss / d logits for one mask."""
    x = logits.clone().requires_grad_()
    value = loss(x, mask)
    value.backward()
    return value.detach(), x.grad


def check_mask_dtypes(loss: nn.Module, num_classes: int = C) -> None:
    """Every integer mask dtype gives exactly the int64 mask's value and gradient (255 ignored)."""
    logits, target = make_case((2, num_classes, 9, 10), seed=4, dtype=torch.float64)
    assert (target == II).any()  # the value a uint8 comparison with -1 wraps to
    expected = value_and_grad(loss, logits, target)
    for dtype in MASK_DTYPES:
        got = value_and_grad(loss, logits, target.to(dtype))
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{dtype}")


@pytest.mark.parametrize("name", list(TERMS))
def test_every_term_takes_any_integer_mask(name: str) -> None:
    check_mask_dtypes(TERMS[name]())


@pytest.mark.parametrize("path", ["auto", "false"])
@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_fused_and_plain_takes_any_integer_mask(name: str, path: str) -> None:
    loss = instantiate(preset(name, class_weights=SHARED["class_weights"], fused=path))
    if path == "false":
        assert not loss.is_fused
    check_mask_dtypes(loss)


def test_a_uint8_png_mask_with_255_borders_is_read_as_ignored() -> None:
    """A mask read the common way, `torch.from_numpy(np.array(Image.open(png)))`: uint8 with 255."""
    logits = torch.randn(1, 3, 2, 2)
    mask = torch.tensor([[[0, 1], [255, 2]]], dtype=torch.uint8)
    for term in (CELoss(), FocalLoss(), DiceLoss(), BCELoss(), TverskyLoss(), LovaszLoss(), OHEMLoss()):
        assert torch.isfinite(term(logits, mask)), type(term).__name__
    # -1 is a stray label in a signed mask (it is no ignore_index here), whatever the dtype
    for dtype in (torch.int8, torch.int16, torch.int32, torch.int64):
        with pytest.raises(ValueError, match="label -1,"):
            CELoss()(logits, mask.to(dtype).masked_fill(mask == 255, -1))
    with pytest.raises(ValueError, match="integer class indices"):
        CELoss()(logits, mask.float())


@pytest.mark.parametrize("dtype", MASK_DTYPES)
def test_metrics_count_any_integer_mask_alike(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(5)
    target = torch.randint(0, 21, (3, 17, 19), generator=generator)
    target[torch.rand(target.shape, generator=generator) < 0.2] = II
    pred = torch.randint(0, 21, target.shape, generator=generator)
    # the reference counts by hand, pixel by pixel
    expected = torch.zeros(21, 21, dtype=torch.long)
    for truth, guess in zip(target.flatten().tolist(), pred.flatten().tolist(), strict=True):
        if truth != II:
            expected[truth, guess] += 1
    assert torch.equal(confusion_matrix(pred.to(dtype), target.to(dtype), 21, II), expected)
    metrics = SegmentationMetrics(21, II)
    metrics.update(pred.to(dtype), target.to(dtype))
    assert torch.equal(metrics.confmat, expected)


# ---------------------------------------------------------------- the loss without Lightning


def test_instantiating_the_loss_imports_neither_lightning_nor_torchmetrics() -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from hydra import compose, initialize_config_dir
        from hydra.utils import instantiate
        import torch
        with initialize_config_dir(config_dir={str(ROOT / "conf")!r}, version_base="1.3"):
            cfg = compose("train", overrides=["loss=focal_dice", "loss.class_weights=[1,1,1,1,1,1]",
                                              "data.num_classes=6"])
        loss = instantiate(cfg.loss)
        value = loss(torch.randn(2, 6, 8, 8), torch.randint(0, 6, (2, 8, 8), dtype=torch.uint8))
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "torchmetrics",
                                                                     "pytorch_lightning"))
        print(type(loss).__name__, float(value), heavy)
        assert "lightning" not in sys.modules and "torchmetrics" not in sys.modules, heavy
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    name, value, heavy = done.stdout.split(maxsplit=2)
    assert name == "CompositeLoss" and float(value) > 0 and heavy.strip() == "[]"
