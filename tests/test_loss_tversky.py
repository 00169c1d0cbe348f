"""(Focal) Tversky: plain and fused against a float64 per-pixel loop, Dice as a special case, config errors."""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from src.losses.dice import dice_loss
from src.losses.fused import fused_terms
from src.losses.tversky import TverskyLoss, tversky_loss
from src.utils.errors import UserError
from src.utils.loss_config import composite_loss
from tests.conftest import SMOKE_DATA
from tests.helpers.cli import run_script
from tests.helpers.loss_checks import check_all_ignored_is_zero, check_bf16, one_thread, preset  # noqa: F401 (one_thread: autouse fixture)
from tests.helpers.loss_reference import II, make_case, rel_err

ROOT = Path(__file__).resolve().parents[1]
C = 5
WEIGHTS = [0.5, 2.0, 1.0, 0.25, 3.0]
SHAPES = {"4d": (2, C, 5, 7), "5d": (2, C, 3, 4, 5)}
PARAMS = {
    "default": {},
    "dice_like": {"alpha": 0.5, "beta": 0.5, "smooth": 1.0},
    "focal_all": {"alpha": 0.7, "beta": 0.3, "gamma": 0.75, "classes": "all"},
    "focal_g2": {"gamma": 2.0, "smooth": 0.0},
}


def ref_tversky(
    logits, target, alpha=0.3, beta=0.7, gamma=1.0, smooth=1e-5, classes="present", weight=None
) -> float:
    """The Tversky loss by its definition, pixel by pixel: soft tp/fp/fn per class, then the weighted mean over K."""
    num_classes = logits.shape[1]
    rows = logits.detach().double().movedim(1, -1).reshape(-1, num_classes).tolist()
    tp, fp, fn = [0.0] * num_classes, [0.0] * num_classes, [0.0] * num_classes
    present = set()
    for row, y in zip(rows, target.reshape(-1).tolist(), strict=True):
        if y == II:
            continue
        present.add(y)
        top = max(row)
        exps = [math.exp(v - top) for v in row]
        for c in range(num_classes):
            p = exps[c] / sum(exps)
            if c == y:
                tp[c] += p
                fn[c] += 1 - p
            else:
                fp[c] += p
    if not present:
        return 0.0
    ks = sorted(present) if classes == "present" else range(num_classes)
    w = [1.0] * num_classes if weight is None else weight
    loss = 0.0
    for c in ks:
        index = (tp[c] + smooth) / (tp[c] + alpha * fp[c] + beta * fn[c] + smooth)
        loss += w[c] * max(0.0, 1 - index) ** gamma
    return loss / sum(w[c] for c in ks)


def fused_value(logits, target, weight, chunk_pixels=1 << 16, **params) -> torch.Tensor:
    """The fused form of `TverskyLoss(**params)` run alone by the engine."""
    form = TverskyLoss(**params).fused_term()
    return fused_terms(logits, target, [form], weight, II, chunk_pixels)[0]


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("dims", list(SHAPES))
@pytest.mark.parametrize("params", list(PARAMS))
def test_plain_and_fused_match_the_reference(params: str, dims: str, weighted: bool) -> None:
    """Odd shapes, ignored pixels, an absent class (the last), class weights, a 3-D volume."""
    logits, target = make_case(SHAPES[dims], seed=len(params), dtype=torch.float64)
    weight = torch.tensor(WEIGHTS, dtype=torch.float64) if weighted else None
    args = PARAMS[params]
    expected = ref_tversky(logits, target, weight=WEIGHTS if weighted else None, **args)
    plain = tversky_loss(logits, target, class_weights=weight, **args)
    assert rel_err(float(plain), expected) <= 1e-10
    assert rel_err(float(fused_value(logits, target, weight, **args)), expected) <= 1e-10
    chunked = fused_value(logits.float(), target, weight, chunk_pixels=7, **args)
    assert rel_err(float(chunked), expected) <= 1e-5


@pytest.mark.parametrize("path", ["plain", "fused", "fused_chunked"])
@pytest.mark.parametrize("params", ["default", "focal_all", "focal_g2"])
@pytest.mark.parametrize("dims", ["4d", "5d"])
def test_gradcheck(dims: str, params: str, path: str) -> None:
    shape = (2, C, 2, 3) if dims == "4d" else (1, C, 2, 2, 3)
    logits, target = make_case(shape, seed=3, dtype=torch.float64, ignore_frac=0.0)
    target.view(-1)[:2] = II
    w = torch.tensor(WEIGHTS, dtype=torch.float64)
    args = {**PARAMS[params], "smooth": 0.1}
    if path == "plain":
        function = functools.partial(tversky_loss, target=target, class_weights=w, **args)
    else:
        chunk = 2 if path == "fused_chunked" else 1 << 16

        def function(x: torch.Tensor) -> torch.Tensor:
            return fused_value(x, target, w, chunk, **args)

    assert torch.autograd.gradcheck(function, (logits.requires_grad_(),))


@pytest.mark.parametrize("classes", ["present", "all"])
def test_alpha_beta_one_half_is_dice_with_twice_the_smoothing(classes: str) -> None:
    logits, target = make_case(SHAPES["4d"], seed=4, dtype=torch.float64)
    w = torch.tensor(WEIGHTS, dtype=torch.float64)
    results = []
    for loss in (
        lambda x: tversky_loss(x, target, 0.5, 0.5, 1.0, 0.05, classes, w),
        lambda x: dice_loss(x, target, 0.1, 1.0, classes, w),
    ):
        x = logits.clone().requires_grad_()
        value = loss(x)
        value.backward()
        results.append((value.detach(), x.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-10, atol=1e-15)


def preset_loss(path: str, **overrides) -> torch.nn.Module:
    """`loss=tversky` with the class weights, on the fused or the plain path."""
    loss = instantiate(preset("tversky", class_weights=WEIGHTS, fused=path == "fused", **overrides))
    assert loss.is_fused is (path == "fused") and loss.term_names == ["tversky"]
    return loss


@pytest.mark.parametrize("params", ["default", "focal_all"])
def test_fused_and_plain_agree_in_value_and_gradient(params: str) -> None:
    """The bar of tests/test_losses.py: fp32, 1e-5 relative."""
    logits, target = make_case((2, C, 17, 23), seed=6)
    results = []
    for path in ("fused", "plain"):
        x = logits.clone().requires_grad_()
        value = preset_loss(path, tversky=PARAMS[params])(x, target)
        value.backward()
        results.append((value.detach(), x.grad))
    (fused, fused_grad), (plain, plain_grad) = results
    assert rel_err(float(fused), float(plain)) <= 1e-5
    assert float((fused_grad - plain_grad).norm() / plain_grad.norm()) <= 1e-5


@pytest.mark.parametrize("path", ["fused", "plain"])
def test_all_ignored_batch_is_exactly_zero(path: str) -> None:
    loss = preset_loss(path, tversky={"gamma": 0.5})
    check_all_ignored_is_zero(loss)


@pytest.mark.parametrize("path", ["fused", "plain"])
def test_gamma_below_one_has_a_finite_gradient_at_a_perfect_prediction(path: str) -> None:
    """TI = 1 exactly (saturated softmax): (1 - TI)^0.5 has an infinite slope there, taken as 0."""
    target = torch.tensor([[[0, 1, 2], [1, II, 0]]])
    logits = torch.zeros(1, C, 2, 3, dtype=torch.float64)
    logits.scatter_(1, target.clamp_max(C - 1).unsqueeze(1), 1000.0)
    logits.requires_grad_()
    value = preset_loss(path, tversky={"gamma": 0.5, "smooth": 0.0})(logits, target)
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("path", ["fused", "plain"])
def test_bf16_logits_are_finite_and_close_to_fp32(path: str) -> None:
    loss = preset_loss(path)
    check_bf16(loss)


def test_config_keys_and_defaults() -> None:
    """Every key is overridable without `+`, and the config's defaults are the module's."""
    import inspect

    cfg = preset("tversky")["tversky"]
    assert set(cfg) == {"_target_", "weight", "alpha", "beta", "gamma", "smooth", "classes"}
    signature = inspect.signature(TverskyLoss)
    for key, value in cfg.items():
        if key not in ("_target_", "weight"):
            assert signature.parameters[key].default == value, key


@pytest.mark.parametrize(
    "args,words",
    [
        ({"alpha": -1}, ["loss.tversky.alpha=-1", ">= 0"]),
        ({"beta": -0.5}, ["loss.tversky.beta=-0.5", ">= 0"]),
        ({"alpha": 0, "beta": 0}, ["loss.tversky.beta=0", "alpha + beta > 0"]),
        ({"gamma": 0}, ["loss.tversky.gamma=0", "> 0"]),
        ({"smooth": -1}, ["loss.tversky.smooth=-1"]),
        ({"classes": "some"}, ["loss.tversky.classes='some'", "present"]),
    ],
)
def test_config_errors_name_the_key(args: dict, words: list[str]) -> None:
    spec = {"_target_": "src.losses.tversky.TverskyLoss", **args}
    with pytest.raises(ValueError) as err:
        composite_loss(II, C, tversky=spec)
    assert isinstance(err.value, UserError)  # the CLI prints it as one line
    for word in words:
        assert word in str(err.value)


def test_a_bad_value_on_the_command_line_is_one_line(data_dir: Path, tmp_path: Path) -> None:
    command = [
        sys.executable, "src/train.py", "debug=smoke", *SMOKE_DATA,
        f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path}/logs",
        "loss=tversky", "loss.tversky.alpha=-1",
    ]  # fmt: skip
    result = run_script(command)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    named = [line for line in result.stderr.splitlines() if "loss.tversky.alpha" in line]
    assert named == ["seglab: error: loss.tversky.alpha=-1.0: expected >= 0.0"], result.stderr
