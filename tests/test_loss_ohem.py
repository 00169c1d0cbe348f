"""OHEM cross-entropy: against a float64 per-pixel loop, CE on the kept pixels, config errors."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from hydra.utils import instantiate

from src.losses.ce import ce_loss
from src.losses.ohem import OHEMLoss, hard_pixels, ohem_loss
from src.utils.errors import UserError
from src.utils.loss_config import composite_loss
from tests.helpers.loss_checks import check_all_ignored_is_zero, check_bf16, one_thread, preset  # noqa: F401 (one_thread: autouse fixture)
from tests.helpers.loss_reference import II, make_case, rel_err

C = 5
WEIGHTS = [0.5, 2.0, 1.0, 0.25, 3.0]
SHAPES = {"4d": (2, C, 5, 7), "5d": (2, C, 3, 4, 5)}
# (thresh, min_kept): the default keeps all but the most confident pixel of a small batch; the
# others keep by threshold, by rank (thresh 0), or everything below probability 1
SELECTIONS = {"default": (0.7, 100000), "thresh": (0.3, 5), "rank": (0.0, 3), "all": (1.0, 0)}


def true_class_probabilities(logits, target) -> list[tuple[float, int]]:
    """(p_y, y) of every valid pixel, by a Python softmax per pixel."""
    rows = logits.detach().double().movedim(1, -1).reshape(-1, logits.shape[1]).tolist()
    pixels = []
    for row, y in zip(rows, target.reshape(-1).tolist(), strict=True):
        if y != II:
            exps = [math.exp(v - max(row)) for v in row]
            pixels.append((exps[y] / sum(exps), y))
    return pixels


def ref_ohem(logits, target, thresh=0.7, min_kept=100000, weight=None) -> float:
    """OHEM by its definition: tau from the ascending p_y, then CE averaged over the kept pixels."""
    pixels = true_class_probabilities(logits, target)
    if not pixels:
        return 0.0
    q = sorted(p for p, _ in pixels)
    tau = max(thresh, q[min(min_kept * logits.shape[0], len(q) - 1)])
    w = [1.0] * logits.shape[1] if weight is None else weight
    num = den = 0.0
    for p, y in pixels:
        if p < tau:
            num += w[y] * -math.log(p)
            den += w[y]
    return num / den if den else 0.0


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("dims", list(SHAPES))
@pytest.mark.parametrize("selection", list(SELECTIONS))
def test_matches_the_reference(selection: str, dims: str, weighted: bool) -> None:
    """Odd shapes, ignored pixels, an absent class (the last), class weights."""
    logits, target = make_case(SHAPES[dims], seed=1, dtype=torch.float64)
    weight = torch.tensor(WEIGHTS, dtype=torch.float64) if weighted else None
    thresh, min_kept = SELECTIONS[selection]
    expected = ref_ohem(logits, target, thresh, min_kept, WEIGHTS if weighted else None)
    value = ohem_loss(logits, target, thresh, min_kept, weight)
    assert rel_err(float(value), expected) <= 1e-10
    value32 = ohem_loss(logits.float(), target, thresh, min_kept, weight)
    assert rel_err(float(value32), expected) <= 1e-5


def test_rank_selection_keeps_min_kept_per_image() -> None:
    logits, target = make_case(SHAPES["4d"], seed=2, dtype=torch.float64)
    p_true = torch.softmax(logits, 1).gather(1, target.clamp_max(C - 1).unsqueeze(1)).squeeze(1)
    kept = hard_pixels(p_true, target != II, thresh=0.0, min_kept=3)
    assert int(kept.sum()) == 2 * 3
    assert float(p_true[kept].max()) < float(p_true[(target != II) & ~kept].min())


@pytest.mark.parametrize("selection", ["thresh", "rank", "default"])
def test_value_and_gradient_are_ce_on_the_kept_pixels(selection: str) -> None:
    """The selection carries no gradient: OHEM is CE with the unkept pixels ignored."""
    logits, target = make_case(SHAPES["5d"], seed=3, dtype=torch.float64)
    w = torch.tensor(WEIGHTS, dtype=torch.float64)
    thresh, min_kept = SELECTIONS[selection]
    p_true = torch.softmax(logits, 1).gather(1, target.clamp_max(C - 1).unsqueeze(1)).squeeze(1)
    only_kept = target.masked_fill(~hard_pixels(p_true, target != II, thresh, min_kept), II)
    results = []
    for loss in (
        lambda x: ohem_loss(x, target, thresh, min_kept, w),
        lambda x: ce_loss(x, only_kept, w),
    ):
        x = logits.clone().requires_grad_()
        value = loss(x)
        value.backward()
        results.append((value.detach(), x.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-13, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("selection", ["thresh", "rank"])
@pytest.mark.parametrize("dims", ["4d", "5d"])
def test_gradcheck(dims: str, selection: str) -> None:
    shape = (2, C, 2, 3) if dims == "4d" else (1, C, 2, 2, 3)
    logits, target = make_case(shape, seed=4, dtype=torch.float64, ignore_frac=0.0)
    target.view(-1)[:2] = II
    thresh, min_kept = SELECTIONS[selection]
    w = torch.tensor(WEIGHTS, dtype=torch.float64)
    function = functools.partial(
        ohem_loss, target=target, thresh=thresh, min_kept=min_kept, class_weights=w
    )
    assert torch.autograd.gradcheck(function, (logits.requires_grad_(),))


def test_nothing_kept_is_exactly_zero() -> None:
    """thresh 0 and min_kept 0: tau is the smallest p_y, and no pixel is below it."""
    logits, target = make_case(SHAPES["4d"], seed=5)
    logits.requires_grad_()
    value = ohem_loss(logits, target, thresh=0.0, min_kept=0)
    value.backward()
    assert value.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


def test_all_ignored_batch_is_exactly_zero() -> None:
    loss = instantiate(preset("ohem", class_weights=WEIGHTS))
    assert not loss.is_fused and loss.term_names == ["ohem"]
    check_all_ignored_is_zero(loss)


def test_bf16_logits_are_finite_and_close_to_fp32() -> None:
    loss = instantiate(preset("ohem", class_weights=WEIGHTS))
    check_bf16(loss)


def test_config_keys_and_defaults() -> None:
    import inspect

    cfg = preset("ohem")["ohem"]
    assert set(cfg) == {"_target_", "weight", "thresh", "min_kept"}
    signature = inspect.signature(OHEMLoss)
    for key in ("thresh", "min_kept"):
        assert signature.parameters[key].default == cfg[key], key
    module = OHEMLoss(**{k: v for k, v in cfg.items() if k not in ("_target_", "weight")})
    assert (module.thresh, module.min_kept) == (0.7, 100000)


@pytest.mark.parametrize(
    "args,words",
    [
        ({"thresh": 2}, ["loss.ohem.thresh=2", "[0.0, 1.0]"]),
        ({"thresh": -0.1}, ["loss.ohem.thresh=-0.1", "[0.0, 1.0]"]),
        ({"min_kept": -5}, ["loss.ohem.min_kept=-5", "integer >= 0"]),
        ({"min_kept": 2.5}, ["loss.ohem.min_kept=2.5", "integer >= 0"]),
        ({"min_kept": True}, ["loss.ohem.min_kept=True", "integer >= 0"]),
    ],
)
def test_config_errors_name_the_key(args: dict, words: list[str]) -> None:
    spec = {"_target_": "src.losses.ohem.OHEMLoss", **args}
    with pytest.raises(ValueError) as err:
        composite_loss(II, C, ohem=spec)
    assert isinstance(err.value, UserError)
    for word in words:
        assert word in str(err.value)
