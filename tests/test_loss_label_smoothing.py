"""Label smoothing of the CE term: plain and fused against F.cross_entropy and a float64 loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from src.losses.ce import CELoss, ce_loss
from src.losses.dice import DiceLoss
from src.losses.focal import FocalLoss
from src.losses.fused import fused_terms
from src.utils.errors import UserError
from src.utils.loss_config import composite_loss
from tests.helpers.loss_checks import (  # noqa: F401 (one_thread: autouse fixture)
    check_all_ignored_is_zero,
    check_bf16,
    check_ignored_pixels_change_nothing,
    one_thread,
    preset,
)
from tests.helpers.loss_reference import II, make_case, ref_dice, rel_err

C = 5
WEIGHTS = [0.5, 2.0, 1.0, 0.25, 3.0]
SHAPES = {"4d": (2, C, 5, 7), "5d": (2, C, 3, 4, 5)}
EPS = 0.1


def ref_smoothed_ce(logits, target, eps, weight=None, normalize=True) -> float:
    """Per valid pixel, CE against the target distribution (1 - eps) onehot + eps / C, class-weighted."""
    num_classes = logits.shape[1]
    w = [1.0] * num_classes if weight is None else weight
    rows = logits.detach().double().movedim(1, -1).reshape(-1, num_classes).tolist()
    total = weight_sum = 0.0
    for row, y in zip(rows, target.reshape(-1).tolist(), strict=True):
        if y == II:
            continue
        top = max(row)
        log_norm = top + math.log(sum(math.exp(v - top) for v in row))
        for c in range(num_classes):
            q = (1 - eps) * (c == y) + eps / num_classes
            total += q * w[c] * (log_norm - row[c])
        weight_sum += w[y]
    if not normalize:
        return total
    return total / weight_sum if weight_sum else 0.0


def fused_ce(logits, target, weight, chunk_pixels=1 << 16, **args) -> torch.Tensor:
    """The fused form of `CELoss(**args)` run alone by the engine."""
    return fused_terms(logits, target, [CELoss(**args).fused_term()], weight, II, chunk_pixels)[0]


@pytest.mark.parametrize("normalize", [True, False], ids=["mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("dims", list(SHAPES))
def test_plain_and_fused_equal_torch(dims: str, weighted: bool, normalize: bool) -> None:
    """Exactly F.cross_entropy(weight=w, ignore_index=..., label_smoothing=eps), mean and sum."""
    logits, target = make_case(SHAPES[dims], seed=1, dtype=torch.float64)
    weight = torch.tensor(WEIGHTS, dtype=torch.float64) if weighted else None
    reduction = "mean" if normalize else "sum"
    expected = F.cross_entropy(
        logits, target, weight=weight, ignore_index=II, reduction=reduction, label_smoothing=EPS
    )
    plain = ce_loss(logits, target, weight, II, normalize, EPS)
    torch.testing.assert_close(plain, expected, rtol=1e-12, atol=0)
    args = {"normalize": normalize, "label_smoothing": EPS}
    fused = fused_ce(logits, target, weight, **args)
    torch.testing.assert_close(fused, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("eps", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("normalize", [True, False], ids=["mean", "sum"])
@pytest.mark.parametrize("dims", list(SHAPES))
def test_plain_and_fused_match_the_reference(dims: str, normalize: bool, eps: float) -> None:
    """Odd shapes, ignored pixels, an absent class, class weights; fp32 within 1e-5."""
    logits, target = make_case(SHAPES[dims], seed=2)
    weight = torch.tensor(WEIGHTS)
    expected = ref_smoothed_ce(logits, target, eps, WEIGHTS, normalize)
    assert rel_err(float(ce_loss(logits, target, weight, II, normalize, eps)), expected) <= 1e-5
    args = {"normalize": normalize, "label_smoothing": eps}
    fused = fused_ce(logits, target, weight, chunk_pixels=7, **args)
    assert rel_err(float(fused), expected) <= 1e-5


def _mixed_forms() -> list:
    """Smoothed CE beside a term with per-class p coefficients (Dice) and one on log p_y (focal)."""
    return [
        CELoss(label_smoothing=0.2).fused_term(),
        DiceLoss(smooth=0.1).fused_term(),
        FocalLoss(gamma=2.0).fused_term(),
        CELoss(normalize=False, label_smoothing=0.7).fused_term(),
    ]


@pytest.mark.parametrize("path", ["plain", "plain_sum", "fused", "fused_chunked", "fused_mixed"])
@pytest.mark.parametrize("dims", ["4d", "5d"])
def test_gradcheck(dims: str, path: str) -> None:
    shape = (2, C, 2, 3) if dims == "4d" else (1, C, 2, 2, 3)
    logits, target = make_case(shape, seed=3, dtype=torch.float64, ignore_frac=0.0)
    target.view(-1)[:2] = II
    w = torch.tensor(WEIGHTS, dtype=torch.float64)

    def function(x: torch.Tensor) -> torch.Tensor:
        if path.startswith("plain"):
            return ce_loss(x, target, w, II, path == "plain", 0.2)
        if path == "fused_mixed":
            return fused_terms(x, target, _mixed_forms(), w, II, 2).sum()
        chunk = 2 if path == "fused_chunked" else 1 << 16
        return fused_ce(x, target, w, chunk, label_smoothing=0.2)

    assert torch.autograd.gradcheck(function, (logits.requires_grad_(),))


def preset_loss(name: str, path: str) -> torch.nn.Module:
    """`loss=<name> loss.ce.label_smoothing=0.1` with the class weights, on the fused or the plain path."""
    cfg = preset(name, class_weights=WEIGHTS, fused=path == "fused", ce={"label_smoothing": EPS})
    loss = instantiate(cfg)
    assert loss.is_fused is (path == "fused")
    return loss


@pytest.mark.parametrize("name", ["ce", "ce_dice"])
def test_fused_and_plain_agree_in_value_and_gradient(name: str) -> None:
    """The bar of tests/test_losses.py: fp32, 1e-5 relative."""
    logits, target = make_case((2, C, 17, 23), seed=6)
    results = []
    for path in ("fused", "plain"):
        x = logits.clone().requires_grad_()
        value = preset_loss(name, path)(x, target)
        value.backward()
        results.append((value.detach(), x.grad))
    (fused, fused_grad), (plain, plain_grad) = results
    assert rel_err(float(fused), float(plain)) <= 1e-5
    assert float((fused_grad - plain_grad).norm() / plain_grad.norm()) <= 1e-5
    if name == "ce_dice":
        dice = ref_dice(logits, target, weight=WEIGHTS)
        assert rel_err(float(fused), ref_smoothed_ce(logits, target, EPS, WEIGHTS) + dice) <= 1e-5


@pytest.mark.parametrize("path", ["fused", "plain"])
def test_logits_at_ignored_pixels_change_nothing(path: str) -> None:
    loss = preset_loss("ce", path)
    check_ignored_pixels_change_nothing(loss)


@pytest.mark.parametrize("path", ["fused", "plain"])
def test_all_ignored_batch_is_exactly_zero(path: str) -> None:
    loss = preset_loss("ce", path)
    check_all_ignored_is_zero(loss)


@pytest.mark.parametrize("path", ["fused", "plain"])
def test_bf16_logits_are_finite_and_close_to_fp32(path: str) -> None:
    loss = preset_loss("ce", path)
    check_bf16(loss)


def test_default_is_no_smoothing() -> None:
    assert preset("ce")["ce"]["label_smoothing"] == 0.0
    assert CELoss().fused_term().label_smoothing == 0.0


@pytest.mark.parametrize("value", [1.5, -0.1])
def test_out_of_range_is_named(value: float) -> None:
    with pytest.raises(ValueError) as err:
        composite_loss(II, C, ce={"_target_": "src.losses.ce.CELoss", "label_smoothing": value})
    assert isinstance(err.value, UserError)
    assert f"loss.ce.label_smoothing={value}" in str(err.value) and "[0.0, 1.0]" in str(err.value)
