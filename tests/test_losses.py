"""Loss terms and presets, plain and fused, against the float64 loop references of tests/helpers."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

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
from src.losses.fused import fused_terms
from src.utils.errors import UserError, find_user_error
from src.utils.loss_config import composite_loss
from tests.helpers.loss_checks import (  # noqa: F401 (one_thread: autouse fixture)
    check_all_ignored_is_zero,
    check_bf16,
    check_ignored_pixels_change_nothing,
    one_thread,
    preset,
)
from tests.helpers.loss_reference import (
    II,
    make_case,
    ref_bce,
    ref_ce,
    ref_ce_sum,
    ref_dice,
    ref_focal_sigmoid,
    ref_focal_softmax,
    ref_term,
    rel_err,
)

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ["ce", "bce", "focal", "dice", "ce_dice", "focal_dice"]
C = 5
SHAPES = {"4d": (2, C, 6, 7), "5d": (2, C, 3, 4, 5)}
WEIGHTS = [0.5, 2.0, 1.0, 0.25, 3.0]
PATHS = ["fused", "plain"]


def preset_loss(name: str, path: str = "fused", **overrides) -> CompositeLoss:
    """`instantiate(cfg.loss)` for the preset with the class weights, on the fused or the plain path."""
    loss = instantiate(preset(name, class_weights=WEIGHTS, fused=path == "fused", **overrides))
    assert loss.is_fused is (path == "fused")
    return loss


def terms_of(name: str) -> list[str]:
    """The term names of a preset, in config order."""
    return [k for k in preset(name) if isinstance(preset(name)[k], dict)]


# ---------------------------------------------------------------- each term vs the reference

TERM_CASES = {
    "ce": (lambda x, t, w: ce_loss(x, t, w, II), lambda x, t, w: ref_ce(x, t, w), CELoss, {}),
    "ce_sum": (
        lambda x, t, w: ce_loss(x, t, w, II, normalize=False),
        lambda x, t, w: ref_ce_sum(x, t, w),
        CELoss,
        {"normalize": False},
    ),
    "focal_g2": (
        lambda x, t, w: focal_loss(x, t, 2.0, None, w, II),
        lambda x, t, w: ref_focal_softmax(x, t, 2.0, None, w),
        FocalLoss,
        {"gamma": 2.0},
    ),
    "focal_g05_a": (
        lambda x, t, w: focal_loss(x, t, 0.5, 0.25, w, II),
        lambda x, t, w: ref_focal_softmax(x, t, 0.5, 0.25, w),
        FocalLoss,
        {"gamma": 0.5, "alpha": 0.25},
    ),
    "focal_alist": (
        lambda x, t, w: focal_loss(x, t, 2.0, [0.1, 0.2, 0.3, 0.4, 0.5], w, II),
        lambda x, t, w: ref_focal_softmax(x, t, 2.0, [0.1, 0.2, 0.3, 0.4, 0.5], w),
        FocalLoss,
        {"gamma": 2.0, "alpha": [0.1, 0.2, 0.3, 0.4, 0.5]},
    ),
    "sigmoid_g2": (
        lambda x, t, w: focal_loss(x, t, 2.0, None, w, II, mode="sigmoid"),
        lambda x, t, w: ref_focal_sigmoid(x, t, 2.0, None, w),
        FocalLoss,
        {"gamma": 2.0, "mode": "sigmoid"},
    ),
    "sigmoid_alist": (
        lambda x, t, w: focal_loss(x, t, 1.5, [0.9, 0.1, 0.5, 0.3, 0.7], w, II, mode="sigmoid"),
        lambda x, t, w: ref_focal_sigmoid(x, t, 1.5, [0.9, 0.1, 0.5, 0.3, 0.7], w),
        FocalLoss,
        {"gamma": 1.5, "alpha": [0.9, 0.1, 0.5, 0.3, 0.7], "mode": "sigmoid"},
    ),
    "bce": (lambda x, t, w: bce_loss(x, t, w, II), lambda x, t, w: ref_bce(x, t, w), BCELoss, {}),
    "dice_present": (
        lambda x, t, w: dice_loss(x, t, class_weights=w),
        lambda x, t, w: ref_dice(x, t, weight=w),
        DiceLoss,
        {},
    ),
    "dice_all_b2": (
        lambda x, t, w: dice_loss(x, t, 1.0, 2.0, "all", w, II),
        lambda x, t, w: ref_dice(x, t, 1.0, 2.0, "all", w),
        DiceLoss,
        {"smooth": 1.0, "beta": 2.0, "classes": "all"},
    ),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("dims", list(SHAPES))
@pytest.mark.parametrize("case", list(TERM_CASES))
def test_term_matches_reference(case: str, dims: str, weighted: bool, dtype: torch.dtype) -> None:
    """The pure function (plain autograd) and the module's fused form, both against the reference."""
    logits, target = make_case(SHAPES[dims], seed=list(TERM_CASES).index(case), dtype=dtype)
    weight = torch.tensor(WEIGHTS, dtype=dtype) if weighted else None
    plain, ref, module_class, args = TERM_CASES[case]
    expected = ref(logits, target, WEIGHTS if weighted else None)
    value = plain(logits, target, weight)
    assert value.dim() == 0 and torch.isfinite(value)
    assert rel_err(float(value), expected) <= 1e-5
    fused_form = module_class(**args, ignore_index=II).fused_term()
    fused = fused_terms(logits, target, [fused_form], weight, II)[0]
    assert rel_err(float(fused), expected) <= 1e-5


def test_ce_is_torch_cross_entropy() -> None:
    for shape in SHAPES.values():
        logits, target = make_case(shape, seed=1, dtype=torch.float64)
        w = torch.tensor(WEIGHTS, dtype=torch.float64)
        expected = F.cross_entropy(logits, target, weight=w, ignore_index=II)
        torch.testing.assert_close(ce_loss(logits, target, w), expected, rtol=1e-12, atol=0)
        summed = F.cross_entropy(logits, target, weight=w, ignore_index=II, reduction="sum")
        torch.testing.assert_close(ce_loss(logits, target, w, normalize=False), summed)


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
    a, b = focal_loss(x1, target, gamma=0.0, class_weights=w), ce_loss(x2, target, w)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b, rtol=1e-14, atol=0)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-12, atol=1e-15)


def test_module_forms_equal_functional_forms() -> None:
    logits, target = make_case(SHAPES["4d"], seed=4)
    w = torch.tensor(WEIGHTS)
    pairs = [
        (CELoss(II, WEIGHTS), ce_loss(logits, target, w)),
        (BCELoss(II, WEIGHTS), bce_loss(logits, target, w)),
        (FocalLoss(1.0, 0.3, "softmax", II, WEIGHTS), focal_loss(logits, target, 1.0, 0.3, w)),
        (DiceLoss(0.5, 2.0, "all", II, WEIGHTS), dice_loss(logits, target, 0.5, 2.0, "all", w)),
    ]
    for module, expected in pairs:
        torch.testing.assert_close(module(logits, target), expected)


# ---------------------------------------------------------------- presets vs reference

PRESET_VARIANTS = {
    "default": {},
    "variant": {
        "focal": {"weight": 0.5, "gamma": 1.0, "alpha": [0.9, 0.1, 0.5, 0.3, 0.7], "mode": "sigmoid"},
        "dice": {"weight": 2.0, "smooth": 0.1, "beta": 2.0, "classes": "all"},
        "ce": {"weight": 0.3, "normalize": False},
        "bce": {"weight": 1.5},
    },
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("variant", list(PRESET_VARIANTS))
@pytest.mark.parametrize("dims", list(SHAPES))
@pytest.mark.parametrize("name", PRESETS)
def test_preset_matches_reference(name: str, dims: str, variant: str, path: str) -> None:
    overrides = {t: a for t, a in PRESET_VARIANTS[variant].items() if t in terms_of(name)}
    cfg = preset(name, class_weights=WEIGHTS, fused=path == "fused", **overrides)
    loss = instantiate(cfg)
    assert loss.is_fused is (path == "fused")
    logits, target = make_case(SHAPES[dims], seed=5)
    total = loss(logits, target)
    terms = terms_of(name)
    assert loss.term_names == terms and list(loss.last_terms) == terms
    expected_total = 0.0
    for term in terms:
        ref = ref_term(term, cfg[term], logits, target, WEIGHTS)
        assert rel_err(float(loss.last_terms[term]), ref) <= 1e-5, term
        expected_total += cfg[term]["weight"] * ref
    assert rel_err(float(total), expected_total) <= 1e-5


@pytest.mark.parametrize("case", [*PRESETS, "focal:sigmoid", "focal_dice:sigmoid"])
def test_fused_and_plain_agree_in_value_and_gradient(case: str) -> None:
    """The fused engine's bar: fp32, 1e-5 relative, for every preset (and the sigmoid focal form)."""
    name, _, mode = case.partition(":")
    focal = {"focal": {"mode": "sigmoid", "alpha": 0.25}} if mode else {}
    logits, target = make_case((2, C, 17, 23), seed=6)
    results = []
    for path in PATHS:
        x = logits.clone().requires_grad_()
        value = preset_loss(name, path, **focal)(x, target)
        value.backward()
        results.append((value.detach(), x.grad))
    (fused_value, fused_grad), (plain_value, plain_grad) = results
    assert rel_err(float(fused_value), float(plain_value)) <= 1e-5
    assert float((fused_grad - plain_grad).norm() / plain_grad.norm()) <= 1e-5


def test_fused_false_runs_the_plain_modules(monkeypatch) -> None:
    calls: list[str] = []
    for module_class in (FocalLoss, DiceLoss):
        original = module_class.forward

        def spy(self, logits, mask, original=original, name=module_class.__name__):
            calls.append(name)
            return original(self, logits, mask)

        monkeypatch.setattr(module_class, "forward", spy)
    logits, target = make_case(SHAPES["4d"], seed=7)
    preset_loss("focal_dice", "plain")(logits, target)
    assert calls == ["FocalLoss", "DiceLoss"]
    calls.clear()
    preset_loss("focal_dice", "fused")(logits, target)
    assert calls == []  # auto/true: one pass of the fused engine instead


@pytest.mark.parametrize("name", PRESETS)
def test_preset_has_every_override_path(name: str) -> None:
    """`loss.focal.gamma=...` etc. must work on every preset holding the term, without `+`."""
    full = {
        "ce": {"_target_", "weight", "normalize", "label_smoothing"},
        "bce": {"_target_", "weight"},
        "focal": {"_target_", "weight", "gamma", "alpha", "mode"},
        "dice": {"_target_", "weight", "smooth", "beta", "classes"},
    }
    cfg = preset(name)
    assert {"_target_", "ignore_index", "num_classes", "class_weights", "fused"} <= set(cfg)
    assert cfg["class_weights"] is None and cfg["ignore_index"] == II and cfg["num_classes"] == C
    for term in terms_of(name):
        assert set(cfg[term]) == full[term], (name, term)


@pytest.mark.parametrize("term", ["ce", "bce", "focal", "dice"])
def test_term_config_defaults_are_the_module_defaults(term: str) -> None:
    """The config shows the defaults a user reads; the module's signature must not hide others."""
    import inspect

    cfg = preset(term)[term]
    signature = inspect.signature(instantiate({"_target_": cfg["_target_"]}, _partial_=True).func)
    for key, value in cfg.items():
        if key not in ("_target_", "weight"):
            assert signature.parameters[key].default == value, (term, key)


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


# ---------------------------------------------------------------- a user's own term


class HalfCE(torch.nn.Module):
    """A user's term: takes only what it names (ignore_index), not the class weights."""

    def __init__(self, ignore_index: int, scale: float = 0.5) -> None:
        super().__init__()
        self.ignore_index, self.scale = ignore_index, scale

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.scale * F.cross_entropy(logits, mask, ignore_index=self.ignore_index)


def test_a_users_term_joins_by_config_and_the_composite_goes_plain() -> None:
    cfg = preset("ce_dice", class_weights=WEIGHTS)
    cfg["mine"] = {"_target_": f"{__name__}.HalfCE", "weight": 0.3, "scale": 2.0}
    loss = instantiate(cfg)
    assert loss.term_names == ["ce", "dice", "mine"] and not loss.is_fused
    assert loss.terms["mine"].ignore_index == II and loss.terms["mine"].scale == 2.0
    logits, target = make_case(SHAPES["4d"], seed=8)
    total = loss(logits, target)
    mine = 2.0 * ref_ce(logits, target)
    assert rel_err(float(loss.last_terms["mine"]), mine) <= 1e-5
    expected = ref_ce(logits, target, WEIGHTS) + ref_dice(logits, target, weight=WEIGHTS) + 0.3 * mine
    assert rel_err(float(total), expected) <= 1e-5
    cfg["fused"] = True
    with pytest.raises(Exception) as err:  # Hydra wraps it; the CLI prints the UserError inside
        instantiate(cfg)
    assert "loss.fused=true but term(s) ['mine'] have no fused form" in str(find_user_error(err.value))


# ---------------------------------------------------------------- gradients and numerics

GRAD_CASES = {
    "ce": lambda x, t, w: ce_loss(x, t, w),
    "ce_sum": lambda x, t, w: ce_loss(x, t, w, normalize=False),
    "focal": lambda x, t, w: focal_loss(x, t, 2.0, [0.1, 0.2, 0.3, 0.4, 0.5], w),
    "focal_g05": lambda x, t, w: focal_loss(x, t, 0.5, None, w),
    "sigmoid": lambda x, t, w: focal_loss(x, t, 2.0, 0.25, w, mode="sigmoid"),
    "bce": lambda x, t, w: bce_loss(x, t, w),
    "dice": lambda x, t, w: dice_loss(x, t, class_weights=w),
    "dice_all": lambda x, t, w: dice_loss(x, t, 0.1, 2.0, "all", w),
}


def _every_fused_form() -> list:
    return [
        CELoss().fused_term(),
        BCELoss().fused_term(),
        FocalLoss(gamma=2.0, alpha=[0.1, 0.2, 0.3, 0.4, 0.5]).fused_term(),
        FocalLoss(gamma=1.5, alpha=0.25, mode="sigmoid").fused_term(),
        DiceLoss(smooth=0.1, beta=2.0, classes="all").fused_term(),
        CELoss(normalize=False).fused_term(),
    ]


@pytest.mark.parametrize("dims", ["4d", "5d"])
@pytest.mark.parametrize("case", [*GRAD_CASES, "fused_all", "fused_chunked"])
def test_gradcheck(case: str, dims: str) -> None:
    shape = (2, C, 2, 3) if dims == "4d" else (1, C, 2, 2, 3)
    logits, target = make_case(shape, seed=7, dtype=torch.float64, ignore_frac=0.0)
    target.view(-1)[:2] = II
    w = torch.tensor(WEIGHTS, dtype=torch.float64)
    if case in GRAD_CASES:
        function = functools.partial(GRAD_CASES[case], t=target, w=w)
    else:
        chunk = 2 if case == "fused_chunked" else 1 << 16
        function = lambda x: fused_terms(x, target, _every_fused_form(), w, II, chunk).sum()  # noqa: E731
    assert torch.autograd.gradcheck(function, (logits.requires_grad_(),))


def test_chunking_does_not_change_values_or_gradients() -> None:
    logits, target = make_case((3, C, 5, 6), seed=8, dtype=torch.float64)
    results = []
    for chunk in (1, 7, 30, 10_000):
        x = logits.clone().requires_grad_()
        weights = torch.tensor(WEIGHTS, dtype=torch.float64)
        values = fused_terms(x, target, _every_fused_form(), weights, II, chunk)
        values.sum().backward()
        results.append((values.detach(), x.grad))
    for values, grad in results[1:]:
        torch.testing.assert_close(values, results[0][0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-10, atol=1e-14)


LOSS_IDS = [*PRESETS, "focal_sigmoid"]


def _named_loss(name: str, path: str) -> CompositeLoss:
    if name == "focal_sigmoid":
        return preset_loss("focal", path, focal={"mode": "sigmoid", "alpha": 0.25})
    return preset_loss(name, path)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", LOSS_IDS)
def test_logits_at_ignored_pixels_change_nothing(name: str, path: str) -> None:
    loss = _named_loss(name, path)
    check_ignored_pixels_change_nothing(loss)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("resize", [False, True], ids=["same_size", "resized"])
@pytest.mark.parametrize("name", LOSS_IDS)
def test_all_ignored_batch_is_exactly_zero(name: str, resize: bool, path: str) -> None:
    check_all_ignored_is_zero(_named_loss(name, path), size=4 if resize else 8)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", LOSS_IDS)
def test_bf16_logits_are_finite_and_close_to_fp32(name: str, path: str) -> None:
    check_bf16(_named_loss(name, path))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape,size", [((2, C, 4, 5), (8, 10)), ((1, C, 2, 3, 3), (4, 6, 5))])
def test_logits_are_resized_to_the_mask(shape, size, path: str) -> None:
    loss = preset_loss("focal_dice", path)
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


@pytest.mark.parametrize("path", PATHS)
def test_channels_last_logits_give_the_same_gradient(path: str) -> None:
    loss = preset_loss("focal_dice", path)
    logits, target = make_case((2, C, 6, 7), seed=12, dtype=torch.float64)
    grads = []
    for x in (logits.clone(), logits.clone().to(memory_format=torch.channels_last)):
        x.requires_grad_()
        loss(x, target).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-16)


# ---------------------------------------------------------------- composite contract


def test_last_terms_are_unweighted_and_detached() -> None:
    loss = CompositeLoss({"ce": CELoss(), "dice": DiceLoss()}, {"ce": 0.5, "dice": 2.0})
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
    loss = preset_loss("ce")
    assert loss.class_weights.tolist() == pytest.approx(WEIGHTS)
    assert loss.terms["ce"].class_weights.tolist() == pytest.approx(WEIGHTS)
    assert not any("class_weights" in key for key in loss.state_dict())


def _spec(term: str, **args) -> dict:
    return {"_target_": preset(term)[term]["_target_"], **args}


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"class_weights": "auto", "ce": _spec("ce")}, ["loss.class_weights='auto'", "resolve"]),
        (
            {"class_weights": [1.0, 2.0, 3.0], "ce": _spec("ce")},
            ["loss.class_weights", "length 3", "num_classes=5"],
        ),
        ({"ce": _spec("ce", weight=1.0, wieght=2)}, ["loss.ce", "wieght"]),
        ({"focal": _spec("focal", mode="softmaxx")}, ["loss.focal.mode", "softmaxx"]),
        ({"focal": _spec("focal", gamma=-1)}, ["loss.focal.gamma", "-1"]),
        ({"focal": _spec("focal", alpha=[0.5, 0.5])}, ["loss.focal.alpha", "2 values", "num_classes=5"]),
        ({"dice": _spec("dice", classes="some")}, ["loss.dice.classes", "some"]),
        ({"dice": {"smooth": 1.0}}, ["loss.dice", "_target_"]),
        ({"ce": _spec("ce"), "fused": "maybe"}, ["loss.fused", "maybe"]),
        ({}, ["no term"]),
    ],
)
def test_config_errors_name_the_key(kwargs: dict, words: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        composite_loss(II, C, **kwargs)
    assert isinstance(err.value, UserError)  # the CLI prints it as one line
    for word in words:
        assert word in str(err.value)


def test_bad_labels_and_shapes_are_reported() -> None:
    for path in PATHS:
        loss = preset_loss("ce", path)
        logits = torch.randn(1, C, 4, 4)
        target = torch.zeros(1, 4, 4, dtype=torch.long)
        for label in (7, C, -1):  # C is the one-hot losses' ignore label, not ours
            target[0, 0, 0] = label
            with pytest.raises(ValueError, match=f"label {label},"):
                loss(logits, target)
        with pytest.raises(ValueError, match="does not match"):
            loss(logits, torch.zeros(4, 4, dtype=torch.long))


@pytest.mark.parametrize("path", PATHS)
def test_autocast_does_not_lower_the_loss_precision(path: str) -> None:
    """Under bf16 autocast the terms still sum in fp32 (their reductions would otherwise run in bf16)."""
    loss = preset_loss("focal_dice", path)
    logits, target = make_case((2, C, 16, 16), seed=14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(logits, target)
    assert value.dtype == torch.float32
    assert rel_err(float(value), float(loss(logits, target))) <= 1e-6


def test_worker_threads_give_the_serial_result() -> None:
    """On CPU, chunks are spread over worker threads; values and gradients must not change."""
    logits, target = make_case((3, C, 6, 7), seed=15, dtype=torch.float64)
    w = torch.tensor(WEIGHTS, dtype=torch.float64)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        x = logits.clone().requires_grad_()
        values = fused_terms(x, target, _every_fused_form(), w, II, chunk_pixels=8)
        values.sum().backward()
        with torch.inference_mode():  # validation runs the loss in inference mode
            inference = fused_terms(logits, target, _every_fused_form(), w, II, chunk_pixels=8)
        results.append((values.detach(), x.grad, inference))
    for got, expected in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
