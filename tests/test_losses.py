"""Loss terms and presets against an independent float64 reference written with plain loops.

The references below follow the issue's definitions literally (tp/fp/fn counted pixel by pixel,
BCE as -[y log q + (1-y) log(1-q)]), not the engine's algebra, so a shared mistake is unlikely.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from src.losses import (
    BCELoss,
    CELoss,
    CompositeLoss,
    DiceLoss,
    FocalLoss,
    bce_loss,
    ce_loss,
    dice_loss,
    focal_loss,
)
from src.losses.functional import fused_terms
from src.utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ["ce", "bce", "focal", "dice", "ce_dice", "focal_dice"]
II = 255
C = 5
SHAPES = {"4d": (2, C, 6, 7), "5d": (2, C, 3, 4, 5)}
WEIGHTS = [0.5, 2.0, 1.0, 0.25, 3.0]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: OpenMP start-up dominates torch's parallel kernels on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- independent reference


def _pixels(logits: torch.Tensor, target: torch.Tensor) -> list[tuple[list[float], int]]:
    z = np.moveaxis(logits.detach().double().numpy(), 1, -1).reshape(-1, logits.shape[1])
    return list(zip(z.tolist(), target.numpy().reshape(-1).tolist(), strict=True))


def _softmax(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def _w(weight, c: int) -> float:
    return 1.0 if weight is None else float(weight[c])


def _a(alpha, c: int) -> float:
    if alpha is None:
        return 1.0
    return float(alpha) if isinstance(alpha, float | int) else float(alpha[c])


def ref_focal_softmax(logits, target, gamma=0.0, alpha=None, weight=None) -> float:
    num = den = 0.0
    for row, y in _pixels(logits, target):
        if y == II:
            continue
        p = _softmax(row)[y]
        num += _w(weight, y) * _a(alpha, y) * (1 - p) ** gamma * -math.log(p)
        den += _w(weight, y)
    return num / den if den else 0.0


def ref_ce(logits, target, weight=None) -> float:
    return ref_focal_softmax(logits, target, 0.0, None, weight)


def ref_focal_sigmoid(logits, target, gamma=0.0, alpha=None, weight=None) -> float:
    num, valid = 0.0, 0
    for row, y in _pixels(logits, target):
        if y == II:
            continue
        valid += 1
        for c, z in enumerate(row):
            q = 1 / (1 + math.exp(-z))
            t = 1.0 if c == y else 0.0
            qt = q * t + (1 - q) * (1 - t)
            at = _a(alpha, c) * t + (1 - _a(alpha, c)) * (1 - t) if alpha is not None else 1.0
            bce = -(t * math.log(q) + (1 - t) * math.log(1 - q))
            num += _w(weight, c) * at * (1 - qt) ** gamma * bce
    wsum = sum(_w(weight, c) for c in range(logits.shape[1]))
    return num / (valid * wsum) if valid else 0.0


def ref_bce(logits, target, weight=None) -> float:
    return ref_focal_sigmoid(logits, target, 0.0, None, weight)


def ref_dice(logits, target, smooth=1e-5, beta=1.0, classes="present", weight=None) -> float:
    ncls = logits.shape[1]
    tp, fp, fn = [0.0] * ncls, [0.0] * ncls, [0.0] * ncls
    present = set()
    for row, y in _pixels(logits, target):
        if y == II:
            continue
        present.add(y)
        p = _softmax(row)
        for c in range(ncls):
            if c == y:
                tp[c] += p[c]
                fn[c] += 1 - p[c]
            else:
                fp[c] += p[c]
    if not present:
        return 0.0
    b2 = beta**2
    ks = sorted(present) if classes == "present" else range(ncls)
    score = {
        c: ((1 + b2) * tp[c] + smooth) / ((1 + b2) * tp[c] + b2 * fn[c] + fp[c] + smooth)
        for c in ks
    }
    return 1 - sum(_w(weight, c) * score[c] for c in ks) / sum(_w(weight, c) for c in ks)


def ref_term(name: str, args: dict, logits, target, weight) -> float:
    """Reference value of a config term section."""
    if name == "ce":
        return ref_ce(logits, target, weight)
    if name == "bce":
        return ref_bce(logits, target, weight)
    if name == "focal":
        fn = ref_focal_softmax if args.get("mode", "softmax") == "softmax" else ref_focal_sigmoid
        return fn(logits, target, args.get("gamma", 2.0), args.get("alpha"), weight)
    keys = ("smooth", "beta", "classes")
    return ref_dice(logits, target, weight=weight, **{k: args[k] for k in keys if k in args})


# ---------------------------------------------------------------- inputs


def make_case(shape, seed=0, dtype=torch.float32, ignore_frac=0.25, absent=C - 1):
    """Random logits and a mask with ignored pixels; class `absent` never occurs."""
    g = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
    target = torch.randint(0, absent, (shape[0], *shape[2:]), generator=g)
    target[torch.rand(target.shape, generator=g) < ignore_frac] = II
    return logits, target


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def preset(name: str, num_classes: int = C, **loss_overrides) -> dict:
    """conf/loss/<name>.yaml with the data keys it interpolates, resolved to a plain dict."""
    cfg = OmegaConf.create({"data": {"num_classes": num_classes, "ignore_index": II}})
    cfg.loss = OmegaConf.load(ROOT / "conf" / "loss" / f"{name}.yaml")
    for key, value in loss_overrides.items():
        OmegaConf.update(cfg, f"loss.{key}", value)
    return OmegaConf.to_container(cfg.loss, resolve=True)


# ---------------------------------------------------------------- terms vs reference

TERM_CASES = {
    "ce": (lambda x, t, w: ce_loss(x, t, w, II), lambda x, t, w: ref_ce(x, t, w)),
    "focal_g2": (
        lambda x, t, w: focal_loss(x, t, 2.0, None, w, II),
        lambda x, t, w: ref_focal_softmax(x, t, 2.0, None, w),
    ),
    "focal_g05_a": (
        lambda x, t, w: focal_loss(x, t, 0.5, 0.25, w, II),
        lambda x, t, w: ref_focal_softmax(x, t, 0.5, 0.25, w),
    ),
    "focal_alist": (
        lambda x, t, w: focal_loss(x, t, 2.0, [0.1, 0.2, 0.3, 0.4, 0.5], w, II),
        lambda x, t, w: ref_focal_softmax(x, t, 2.0, [0.1, 0.2, 0.3, 0.4, 0.5], w),
    ),
    "sigmoid_g2": (
        lambda x, t, w: focal_loss(x, t, 2.0, None, w, II, mode="sigmoid"),
        lambda x, t, w: ref_focal_sigmoid(x, t, 2.0, None, w),
    ),
    "sigmoid_a": (
        lambda x, t, w: focal_loss(x, t, 1.5, 0.25, w, II, mode="sigmoid"),
        lambda x, t, w: ref_focal_sigmoid(x, t, 1.5, 0.25, w),
    ),
    "sigmoid_alist": (
        lambda x, t, w: focal_loss(x, t, 2.0, [0.9, 0.1, 0.5, 0.3, 0.7], w, II, mode="sigmoid"),
        lambda x, t, w: ref_focal_sigmoid(x, t, 2.0, [0.9, 0.1, 0.5, 0.3, 0.7], w),
    ),
    "bce": (lambda x, t, w: bce_loss(x, t, w, II), lambda x, t, w: ref_bce(x, t, w)),
    "dice_present": (
        lambda x, t, w: dice_loss(x, t, weight=w),
        lambda x, t, w: ref_dice(x, t, weight=w),
    ),
    "dice_all_b2": (
        lambda x, t, w: dice_loss(x, t, 1.0, 2.0, "all", w, II),
        lambda x, t, w: ref_dice(x, t, 1.0, 2.0, "all", w),
    ),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("dims", list(SHAPES))
@pytest.mark.parametrize("case", list(TERM_CASES))
def test_term_matches_reference(case: str, dims: str, weighted: bool, dtype: torch.dtype) -> None:
    logits, target = make_case(SHAPES[dims], seed=list(TERM_CASES).index(case), dtype=dtype)
    weight = torch.tensor(WEIGHTS, dtype=dtype) if weighted else None
    ours, ref = TERM_CASES[case]
    value = ours(logits, target, weight)
    assert value.dim() == 0 and torch.isfinite(value)
    assert rel_err(float(value), ref(logits, target, WEIGHTS if weighted else None)) <= 1e-5


def test_ce_is_torch_cross_entropy() -> None:
    for shape in SHAPES.values():
        logits, target = make_case(shape, seed=1, dtype=torch.float64)
        w = torch.tensor(WEIGHTS, dtype=torch.float64)
        expected = F.cross_entropy(logits, target, weight=w, ignore_index=II)
        torch.testing.assert_close(ce_loss(logits, target, w), expected, rtol=1e-12, atol=0)


def test_sigmoid_forms_match_torchvision_and_bce_with_logits() -> None:
    torchvision_ops = pytest.importorskip("torchvision.ops")
    logits, target = make_case((2, C, 5, 6), seed=2, dtype=torch.float64, ignore_frac=0.0)
    onehot = F.one_hot(target, C).movedim(-1, 1).double()
    expected = torchvision_ops.sigmoid_focal_loss(
        logits, onehot, alpha=0.25, gamma=2.0, reduction="mean"
    )
    torch.testing.assert_close(focal_loss(logits, target, 2.0, 0.25, mode="sigmoid"), expected)
    expected = F.binary_cross_entropy_with_logits(logits, onehot)
    torch.testing.assert_close(bce_loss(logits, target), expected)


def test_focal_gamma0_equals_ce_values_and_gradients() -> None:
    logits, target = make_case(SHAPES["4d"], seed=3, dtype=torch.float64)
    w = torch.tensor(WEIGHTS, dtype=torch.float64)
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    a, b = focal_loss(x1, target, gamma=0.0, weight=w), ce_loss(x2, target, w)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b, rtol=1e-14, atol=0)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-12, atol=1e-15)


def test_module_forms_equal_functional_forms() -> None:
    logits, target = make_case(SHAPES["4d"], seed=4)
    w = torch.tensor(WEIGHTS)
    pairs = [
        (CELoss(II, w), ce_loss(logits, target, w)),
        (BCELoss(II, w), bce_loss(logits, target, w)),
        (FocalLoss(1.0, 0.3, "softmax", II, w), focal_loss(logits, target, 1.0, 0.3, w)),
        (DiceLoss(0.5, 2.0, "all", II, w), dice_loss(logits, target, 0.5, 2.0, "all", w)),
    ]
    for module, expected in pairs:
        torch.testing.assert_close(module(logits, target), expected)


# ---------------------------------------------------------------- presets vs reference

PRESET_VARIANTS = {
    "default": {},
    "variant": {
        "focal": {
            "weight": 0.5,
            "gamma": 1.0,
            "alpha": [0.9, 0.1, 0.5, 0.3, 0.7],
            "mode": "sigmoid",
        },
        "dice": {"weight": 2.0, "smooth": 0.1, "beta": 2.0, "classes": "all"},
        "ce": {"weight": 0.3},
        "bce": {"weight": 1.5},
    },
}


@pytest.mark.parametrize("variant", list(PRESET_VARIANTS))
@pytest.mark.parametrize("dims", list(SHAPES))
@pytest.mark.parametrize("name", PRESETS)
def test_preset_matches_reference(name: str, dims: str, variant: str) -> None:
    overrides = {"class_weights": WEIGHTS}
    for term, args in PRESET_VARIANTS[variant].items():
        if term in preset(name):
            overrides[term] = args
    cfg = preset(name, **overrides)
    loss = instantiate(cfg)
    logits, target = make_case(SHAPES[dims], seed=5)
    total = loss(logits, target)
    terms = [t for t in ("ce", "bce", "focal", "dice") if t in cfg]
    assert loss.term_names == terms and list(loss.last_terms) == terms
    expected_total = 0.0
    for term in terms:
        ref = ref_term(term, cfg[term], logits, target, WEIGHTS)
        assert rel_err(float(loss.last_terms[term]), ref) <= 1e-5, term
        expected_total += cfg[term]["weight"] * ref
    assert rel_err(float(total), expected_total) <= 1e-5


@pytest.mark.parametrize("name", PRESETS)
def test_preset_has_every_override_path(name: str) -> None:
    """`loss.focal.gamma=...` etc. must work on every preset holding the term, without `+`."""
    full = {
        "ce": {"weight"},
        "bce": {"weight"},
        "focal": {"weight", "gamma", "alpha", "mode"},
        "dice": {"weight", "smooth", "beta", "classes"},
    }
    cfg = preset(name)
    assert {"_target_", "ignore_index", "num_classes", "class_weights"} <= set(cfg)
    assert cfg["class_weights"] is None and cfg["ignore_index"] == II and cfg["num_classes"] == C
    for term in set(cfg) & set(full):
        assert set(cfg[term]) == full[term], (name, term)


def test_user_overrides_through_train_config() -> None:
    """Compose conf/train.yaml as the command line would and check the overrides reach the loss."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        probe = compose("train")
        n = probe.data.num_classes
        weights = [float(i + 1) for i in range(n)]
        cfg = compose(
            "train",
            overrides=[
                "loss=focal_dice",
                "loss.focal.gamma=0",
                "loss.dice.classes=all",
                "loss.dice.weight=0.5",
                f"loss.class_weights=[{','.join(map(str, weights))}]",
            ],
        )
    GlobalHydra.instance().clear()
    loss = instantiate(cfg.loss)
    logits, target = make_case((2, n, 8, 8), seed=6)
    target[target >= n] = II
    total = loss(logits, target)
    focal = ref_focal_softmax(logits, target, 0.0, None, weights)
    dice = ref_dice(logits, target, classes="all", weight=weights)
    assert rel_err(float(total), focal + 0.5 * dice) <= 1e-5
    assert rel_err(focal, ref_ce(logits, target, weights)) <= 1e-12


# ---------------------------------------------------------------- gradients and numerics


def _all_terms(**kw) -> CompositeLoss:
    return CompositeLoss(
        II, C, WEIGHTS, ce={}, bce={}, focal=kw.get("focal", {}), dice=kw.get("dice", {})
    )


GRAD_CASES = {
    "ce": lambda x, t, w: ce_loss(x, t, w),
    "focal": lambda x, t, w: focal_loss(x, t, 2.0, [0.1, 0.2, 0.3, 0.4, 0.5], w),
    "focal_g05": lambda x, t, w: focal_loss(x, t, 0.5, None, w),
    "sigmoid": lambda x, t, w: focal_loss(x, t, 2.0, 0.25, w, mode="sigmoid"),
    "bce": lambda x, t, w: bce_loss(x, t, w),
    "dice": lambda x, t, w: dice_loss(x, t, weight=w),
    "dice_all": lambda x, t, w: dice_loss(x, t, 0.1, 2.0, "all", w),
    "composite": lambda x, t, w: _all_terms()(x, t),
    "composite_chunked": lambda x, t, w: fused_terms(
        x, t, _all_terms().terms, w, chunk_pixels=2
    ).sum(),
}


@pytest.mark.parametrize("dims", ["4d", "5d"])
@pytest.mark.parametrize("case", list(GRAD_CASES))
def test_gradcheck(case: str, dims: str) -> None:
    shape = (2, C, 2, 3) if dims == "4d" else (1, C, 2, 2, 3)
    logits, target = make_case(shape, seed=7, dtype=torch.float64, ignore_frac=0.0)
    target.view(-1)[:2] = II
    w = torch.tensor(WEIGHTS, dtype=torch.float64)
    x = logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: GRAD_CASES[case](x, target, w), (x,))


def test_chunking_does_not_change_values_or_gradients() -> None:
    logits, target = make_case((3, C, 5, 6), seed=8, dtype=torch.float64)
    terms = _all_terms(focal={"mode": "softmax"}).terms
    results = []
    for chunk in (1, 7, 30, 10_000):
        x = logits.clone().requires_grad_()
        values = fused_terms(
            x, target, terms, torch.tensor(WEIGHTS, dtype=torch.float64), II, chunk
        )
        values.sum().backward()
        results.append((values.detach(), x.grad))
    for values, grad in results[1:]:
        torch.testing.assert_close(values, results[0][0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-10, atol=1e-14)


def _loss_for(name: str, sigmoid: bool = False) -> CompositeLoss:
    cfg = preset(name, class_weights=WEIGHTS)
    if sigmoid and "focal" in cfg:
        cfg["focal"]["mode"] = "sigmoid"
        cfg["focal"]["alpha"] = 0.25
    return instantiate(cfg)


LOSS_IDS = [*PRESETS, "focal_sigmoid"]


def _named_loss(name: str) -> CompositeLoss:
    return _loss_for("focal", sigmoid=True) if name == "focal_sigmoid" else _loss_for(name)


@pytest.mark.parametrize("name", LOSS_IDS)
def test_logits_at_ignored_pixels_change_nothing(name: str) -> None:
    loss = _named_loss(name)
    logits, target = make_case((2, C, 9, 10), seed=9, dtype=torch.float64)
    ignored = (target == II).unsqueeze(1).expand_as(logits)
    changed = logits.clone()
    changed[ignored] = 50 * torch.randn(int(ignored.sum()), dtype=torch.float64)
    grads, values = [], []
    for x in (logits.clone().requires_grad_(), changed.requires_grad_()):
        value = loss(x, target)
        value.backward()
        values.append(value.detach())
        grads.append(x.grad)
    torch.testing.assert_close(values[0], values[1], rtol=1e-13, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-16)
    assert torch.count_nonzero(grads[0][ignored]) == 0
    assert torch.count_nonzero(grads[0][~ignored]) > 0


@pytest.mark.parametrize("resize", [False, True], ids=["same_size", "resized"])
@pytest.mark.parametrize("name", LOSS_IDS)
def test_all_ignored_batch_is_exactly_zero(name: str, resize: bool) -> None:
    loss = _named_loss(name)
    logits = torch.randn(2, C, 4 if resize else 8, 8, requires_grad=True)
    target = torch.full((2, 8, 8), II)
    value = loss(logits, target)
    value.backward()
    assert value.item() == 0.0
    assert all(v.item() == 0.0 for v in loss.last_terms.values())
    assert torch.count_nonzero(logits.grad) == 0 and not torch.isnan(logits.grad).any()


@pytest.mark.parametrize("name", LOSS_IDS)
def test_bf16_logits_are_finite_and_close_to_fp32(name: str) -> None:
    loss = _named_loss(name)
    logits, target = make_case((2, C, 32, 32), seed=10)
    x16 = logits.bfloat16().requires_grad_()
    v16 = loss(x16, target)
    v16.backward()
    v32 = loss(logits, target)
    v16 = v16.detach()
    assert torch.isfinite(v16) and abs(float(v16) - float(v32)) <= 1e-2
    assert x16.grad.dtype == torch.bfloat16 and torch.isfinite(x16.grad).all()
    # the fp32 accumulation: bf16 logits give what fp32 gives on the same (rounded) values
    assert rel_err(float(v16), float(loss(x16.detach().float(), target))) <= 1e-6


@pytest.mark.parametrize("shape,size", [((2, C, 4, 5), (8, 10)), ((1, C, 2, 3, 3), (4, 6, 5))])
def test_logits_are_resized_to_the_mask(shape, size) -> None:
    loss = _loss_for("focal_dice")
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, C, (shape[0], *size), generator=g)
    mode = "bilinear" if len(size) == 2 else "trilinear"
    big = F.interpolate(logits.detach(), size=size, mode=mode, align_corners=False)
    loss(logits, target).backward()
    expected = ref_focal_softmax(big, target, 2.0, None, WEIGHTS) + ref_dice(
        big, target, weight=WEIGHTS
    )
    assert rel_err(loss(logits, target).item(), expected) <= 1e-10
    assert logits.grad.shape == logits.shape and torch.count_nonzero(logits.grad) > 0


def test_channels_last_logits_give_the_same_gradient() -> None:
    loss = _loss_for("focal_dice")
    logits, target = make_case((2, C, 6, 7), seed=12, dtype=torch.float64)
    grads = []
    for x in (logits.clone(), logits.clone().to(memory_format=torch.channels_last)):
        x.requires_grad_()
        loss(x, target).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-16)


# ---------------------------------------------------------------- composite contract


def test_last_terms_are_unweighted_and_detached() -> None:
    loss = CompositeLoss(II, C, None, ce={"weight": 0.5}, dice={"weight": 2.0})
    logits, target = make_case(SHAPES["4d"], seed=13)
    logits.requires_grad_()
    total = loss(logits, target)
    assert loss.term_names == ["ce", "dice"] and set(loss.last_terms) == {"ce", "dice"}
    assert not any(v.requires_grad for v in loss.last_terms.values())
    assert rel_err(float(loss.last_terms["ce"]), ref_ce(logits, target)) <= 1e-5
    assert rel_err(float(loss.last_terms["dice"]), ref_dice(logits, target)) <= 1e-5
    expected = 0.5 * loss.last_terms["ce"] + 2.0 * loss.last_terms["dice"]
    torch.testing.assert_close(total.detach(), expected)


def test_class_weights_follow_the_module_device_and_stay_out_of_checkpoints() -> None:
    loss = CompositeLoss(II, C, WEIGHTS, ce={})
    assert loss.class_weights.tolist() == pytest.approx(WEIGHTS)
    assert "class_weights" not in loss.state_dict()


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"class_weights": "auto", "ce": {}}, ["loss.class_weights='auto'", "resolve"]),
        (
            {"class_weights": [1.0, 2.0, 3.0], "ce": {}},
            ["loss.class_weights", "length 3", "num_classes=5"],
        ),
        ({"ce": {"weight": 1.0, "wieght": 2}}, ["loss.ce", "wieght"]),
        ({"focal": {"mode": "softmaxx"}}, ["loss.focal.mode", "softmaxx"]),
        ({"focal": {"gamma": -1}}, ["loss.focal.gamma", "-1"]),
        ({"focal": {"alpha": [0.5, 0.5]}}, ["loss.focal.alpha", "2 values", "num_classes=5"]),
        ({"dice": {"classes": "some"}}, ["loss.dice.classes", "some"]),
        ({}, ["no term"]),
    ],
)
def test_config_errors_name_the_key(kwargs: dict, words: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        CompositeLoss(II, C, **kwargs)
    assert isinstance(err.value, UserError)  # the CLI prints it as one line
    for word in words:
        assert word in str(err.value)


def test_bad_labels_and_shapes_are_reported() -> None:
    loss = CompositeLoss(II, C, None, ce={})
    logits = torch.randn(1, C, 4, 4)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    for label in (7, C, -1):  # C is the seed's ignore label, not ours
        target[0, 0, 0] = label
        with pytest.raises(ValueError, match=f"label {label},"):
            loss(logits, target)
    with pytest.raises(ValueError, match="does not match"):
        loss(logits, torch.zeros(4, 4, dtype=torch.long))


def test_autocast_does_not_lower_the_loss_precision() -> None:
    """Under bf16 autocast the engine still sums in fp32 (its reductions would otherwise run in bf16)."""
    loss = _loss_for("focal_dice")
    logits, target = make_case((2, C, 16, 16), seed=14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(logits, target)
    assert value.dtype == torch.float32
    assert rel_err(float(value), float(loss(logits, target))) <= 1e-6


def test_worker_threads_give_the_serial_result() -> None:
    """On CPU, chunks are spread over worker threads; values and gradients must not change."""
    logits, target = make_case((3, C, 6, 7), seed=15, dtype=torch.float64)
    terms = _all_terms().terms
    w = torch.tensor(WEIGHTS, dtype=torch.float64)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        x = logits.clone().requires_grad_()
        values = fused_terms(x, target, terms, w, II, chunk_pixels=8)
        values.sum().backward()
        with torch.inference_mode():  # validation runs the loss in inference mode
            inference = fused_terms(logits, target, terms, w, II, chunk_pixels=8)
        results.append((values.detach(), x.grad, inference))
    for got, expected in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
