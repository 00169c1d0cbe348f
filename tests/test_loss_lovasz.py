"""Lovasz-softmax: against a float64 loop over the set-function definition, in composites, config errors."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from src.losses.ce import ce_loss
from src.losses.lovasz import LovaszLoss, lovasz_loss
from src.utils.errors import UserError, find_user_error
from src.utils.loss_config import composite_loss
from tests.helpers.loss_checks import check_all_ignored_is_zero, check_bf16, one_thread, preset  # noqa: F401 (one_thread: autouse fixture)
from tests.helpers.loss_reference import II, make_case, ref_ce, rel_err

ROOT = Path(__file__).resolve().parents[1]
C = 5
WEIGHTS = [0.5, 2.0, 1.0, 0.25, 3.0]
SHAPES = {"4d": (2, C, 5, 7), "5d": (2, C, 3, 4, 5)}


def softmax_rows(logits, target) -> list[list[tuple[list[float], int]]]:
    """Per image, the (probabilities, label) of each valid pixel, in Python floats."""
    images = []
    for z, y in zip(logits.detach().double(), target, strict=True):
        rows = z.reshape(z.shape[0], -1).T.tolist()
        pixels = []
        for row, label in zip(rows, y.reshape(-1).tolist(), strict=True):
            if label == II:
                continue
            exps = [math.exp(v - max(row)) for v in row]
            pixels.append(([e / sum(exps) for e in exps], label))
        images.append(pixels)
    return images


def ref_lovasz_set(pixels, num_classes: int, classes: str, weight) -> float:
    """The paper's definition on one set: Delta(M) = |M| / |F u M| along the errors, descending."""
    present = {y for _, y in pixels}
    ks = sorted(present) if classes == "present" else range(num_classes)
    w = [1.0] * num_classes if weight is None else weight
    num = den = 0.0
    for c in ks:
        errors = [abs((1.0 if y == c else 0.0) - p[c]) for p, y in pixels]
        fg = {i for i, (_, y) in enumerate(pixels) if y == c}
        wrong: set[int] = set()
        loss_c = previous = 0.0
        for i in sorted(range(len(pixels)), key=lambda i: -errors[i]):
            wrong.add(i)
            jaccard = len(wrong) / len(fg | wrong)
            loss_c += errors[i] * (jaccard - previous)
            previous = jaccard
        num += w[c] * loss_c
        den += w[c]
    return num / den if den else 0.0


def ref_lovasz(logits, target, per_image=False, classes="present", weight=None) -> float:
    """One set over the batch, or the mean over images that have a valid pixel; 0 with none."""
    images = [pixels for pixels in softmax_rows(logits, target) if pixels]
    sets = images if per_image else [[p for pixels in images for p in pixels]] if images else []
    values = [ref_lovasz_set(pixels, logits.shape[1], classes, weight) for pixels in sets]
    return sum(values) / len(values) if values else 0.0


@pytest.mark.parametrize("classes", ["present", "all"])
@pytest.mark.parametrize("per_image", [False, True], ids=["batch", "per_image"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("dims", list(SHAPES))
def test_matches_the_reference(dims: str, weighted: bool, per_image: bool, classes: str) -> None:
    """Odd shapes, ignored pixels, an absent class (the last), class weights, a 3-D volume."""
    logits, target = make_case(SHAPES[dims], seed=1, dtype=torch.float64)
    weight = torch.tensor(WEIGHTS, dtype=torch.float64) if weighted else None
    expected = ref_lovasz(logits, target, per_image, classes, WEIGHTS if weighted else None)
    value = lovasz_loss(logits, target, per_image, classes, weight)
    assert rel_err(float(value), expected) <= 1e-10
    value32 = lovasz_loss(logits.float(), target, per_image, classes, weight)
    assert value32.dtype == torch.float32 and rel_err(float(value32), expected) <= 1e-5


@pytest.mark.parametrize("classes", ["present", "all"])
@pytest.mark.parametrize("per_image", [False, True], ids=["batch", "per_image"])
@pytest.mark.parametrize("dims", ["4d", "5d"])
def test_gradcheck(dims: str, per_image: bool, classes: str) -> None:
    shape = (2, C, 2, 3) if dims == "4d" else (2, C, 2, 2, 3)
    logits, target = make_case(shape, seed=3, dtype=torch.float64, ignore_frac=0.0)
    target.view(-1)[:2] = II
    w = torch.tensor(WEIGHTS, dtype=torch.float64)
    function = functools.partial(
        lovasz_loss, target=target, per_image=per_image, classes=classes, class_weights=w
    )
    # fast mode checks random directional derivatives: the same check for a fraction of the time
    assert torch.autograd.gradcheck(function, (logits.requires_grad_(),), fast_mode=True)


def test_hard_predictions_give_the_jaccard_loss() -> None:
    """At a one-hot prediction the extension is the set function: the mean over K of 1 - IoU_c."""
    logits, target = make_case((2, C, 6, 7), seed=4, dtype=torch.float64)
    predicted = logits.argmax(1)
    saturated = torch.zeros_like(logits).scatter_(1, predicted.unsqueeze(1), 1000.0)
    valid = target != II
    losses = []
    for c in target[valid].unique().tolist():
        gt, pred = (target == c) & valid, (predicted == c) & valid
        losses.append(1 - float((gt & pred).sum()) / float((gt | pred).sum()))
    expected = sum(losses) / len(losses)
    assert rel_err(float(lovasz_loss(saturated, target)), expected) <= 1e-12


def test_per_image_skips_images_without_a_valid_pixel() -> None:
    logits, target = make_case((2, C, 5, 7), seed=5, dtype=torch.float64)
    target[0] = II
    both = lovasz_loss(logits, target, per_image=True)
    assert rel_err(float(both), float(lovasz_loss(logits[1:], target[1:], per_image=True))) <= 1e-14


def test_fp32_keeps_its_digits_over_many_pixels() -> None:
    """The Jaccard steps come from integer counts, so fp32 follows fp64 on a 65k-pixel batch."""
    logits, target = make_case((1, 3, 256, 256), seed=6, dtype=torch.float64)
    results = []
    for dtype in (torch.float64, torch.float32):
        x = logits.to(dtype).detach().requires_grad_()
        value = lovasz_loss(x, target)
        value.backward()
        results.append((value.item(), x.grad.double()))
    (value64, grad64), (value32, grad32) = results
    assert rel_err(value32, value64) <= 1e-5
    assert float((grad32 - grad64).norm() / grad64.norm()) <= 1e-4


def test_logits_at_ignored_pixels_change_nothing() -> None:
    logits, target = make_case((2, C, 9, 10), seed=7, dtype=torch.float64)
    ignored = (target == II).unsqueeze(1).expand_as(logits)
    changed = logits.clone()
    changed[ignored] = 50 * torch.randn(int(ignored.sum()), dtype=torch.float64)
    grads, values = [], []
    for x in (logits.clone().requires_grad_(), changed.requires_grad_()):
        value = lovasz_loss(x, target, per_image=True)
        value.backward()
        values.append(value.detach())
        grads.append(x.grad)
    torch.testing.assert_close(values[0], values[1], rtol=1e-13, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-16)
    assert torch.count_nonzero(grads[0][ignored]) == 0


def compose_loss(*overrides: str) -> torch.nn.Module:
    """The loss `python src/train.py <overrides>` would build (conf/train.yaml composed as the CLI does)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    GlobalHydra.instance().clear()
    return instantiate(cfg.loss)


def test_ce_lovasz_from_the_command_line_runs_plain_with_its_weights() -> None:
    """`loss=ce_lovasz loss.lovasz.weight=0.5 loss.class_weights=[...]`: each term by name, plain."""
    weights = [1.0, 2.0, 0.5, 1.5, 1.0, 0.25]
    loss = compose_loss(
        "loss=ce_lovasz",
        "loss.lovasz.weight=0.5",
        "loss.lovasz.per_image=true",
        f"loss.class_weights=[{','.join(map(str, weights))}]",
    )
    assert loss.term_names == ["ce", "lovasz"] and not loss.is_fused
    logits, target = make_case((2, len(weights), 6, 5), seed=8)
    total = loss(logits, target)
    ce = ref_ce(logits, target, weights)
    lovasz = ref_lovasz(logits, target, per_image=True, weight=weights)
    assert rel_err(float(loss.last_terms["ce"]), ce) <= 1e-5
    assert rel_err(float(loss.last_terms["lovasz"]), lovasz) <= 1e-5
    assert rel_err(float(total), ce + 0.5 * lovasz) <= 1e-5


def test_fused_true_names_the_term_without_a_fused_form() -> None:
    with pytest.raises(Exception) as err:  # Hydra wraps it; the CLI prints the UserError inside
        instantiate(preset("ce_lovasz", fused=True))
    assert "loss.fused=true but term(s) ['lovasz'] have no fused form" in str(
        find_user_error(err.value)
    )


@pytest.mark.parametrize("name", ["lovasz", "ce_lovasz"])
def test_all_ignored_batch_is_exactly_zero(name: str) -> None:
    for per_image in (False, True):
        loss = instantiate(preset(name, class_weights=WEIGHTS, lovasz={"per_image": per_image}))
        check_all_ignored_is_zero(loss)


@pytest.mark.parametrize("name", ["lovasz", "ce_lovasz"])
def test_bf16_logits_are_finite_and_close_to_fp32(name: str) -> None:
    loss = instantiate(preset(name, class_weights=WEIGHTS))
    check_bf16(loss)


def test_config_keys_and_defaults() -> None:
    import inspect

    cfg = preset("ce_lovasz")
    assert set(cfg["lovasz"]) == {"_target_", "weight", "per_image", "classes"}
    assert cfg["ce"]["weight"] == cfg["lovasz"]["weight"] == 1.0
    signature = inspect.signature(LovaszLoss)
    for key in ("per_image", "classes"):
        assert signature.parameters[key].default == cfg["lovasz"][key], key


@pytest.mark.parametrize(
    "args,words",
    [
        ({"classes": "some"}, ["loss.lovasz.classes='some'", "present"]),
        ({"per_image": "yes"}, ["loss.lovasz.per_image='yes'", "true or false"]),
    ],
)
def test_config_errors_name_the_key(args: dict, words: list[str]) -> None:
    spec = {"_target_": "src.losses.lovasz.LovaszLoss", **args}
    with pytest.raises(ValueError) as err:
        composite_loss(II, C, ce={"_target_": "src.losses.ce.CELoss"}, lovasz=spec)
    assert isinstance(err.value, UserError)
    for word in words:
        assert word in str(err.value)


def test_module_form_equals_the_function_and_ce_is_untouched() -> None:
    logits, target = make_case(SHAPES["5d"], seed=11)
    w = torch.tensor(WEIGHTS)
    module = LovaszLoss(True, "all", II, WEIGHTS)
    torch.testing.assert_close(module(logits, target), lovasz_loss(logits, target, True, "all", w))
    loss = instantiate(preset("ce_lovasz", class_weights=WEIGHTS))
    loss(logits, target)
    torch.testing.assert_close(loss.last_terms["ce"], ce_loss(logits, target, w))
