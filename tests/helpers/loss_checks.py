"""What every loss term's tests check the same way: the composed preset, bf16, all-ignored batches."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from torch import nn

from tests.helpers.loss_reference import II, make_case, rel_err

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: OpenMP start-up dominates torch's parallel kernels on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def composed_loss(name: str) -> dict:
    """`loss=<name>` as `python src/train.py` composes it (defaults list included), unresolved."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"loss={name}"])
    GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg.loss)


def preset(name: str, num_classes: int = 5, **loss_overrides) -> dict:
    """The `loss=<name>` config with the data keys it interpolates, resolved to a plain dict."""
    cfg = OmegaConf.create({"data": {"num_classes": num_classes, "ignore_index": II}})
    cfg.loss = composed_loss(name)
    for key, value in loss_overrides.items():
        OmegaConf.update(cfg, f"loss.{key}", value, merge=True)
    return OmegaConf.to_container(cfg.loss, resolve=True)


def check_bf16(loss: nn.Module, num_classes: int = 5) -> None:
    """bf16 logits: finite, close to fp32, summed in fp32 (also under autocast), bf16 gradient."""
    logits, target = make_case((2, num_classes, 32, 32), seed=10)
    x16 = logits.bfloat16().requires_grad_()
    v16 = loss(x16, target)
    v16.backward()
    v16 = v16.detach()
    assert torch.isfinite(v16) and abs(float(v16) - float(loss(logits, target))) <= 1e-2
    assert x16.grad.dtype == torch.bfloat16 and torch.isfinite(x16.grad).all()
    # the fp32 accumulation: bf16 logits give what fp32 gives on the same (rounded) values
    assert rel_err(float(v16), float(loss(x16.detach().float(), target))) <= 1e-6
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the composite sums outside autocast
        under_autocast = loss(logits, target)
    assert under_autocast.dtype == torch.float32
    assert rel_err(float(under_autocast), float(loss(logits, target))) <= 1e-6


def check_all_ignored_is_zero(loss: nn.Module, num_classes: int = 5, size: int = 8) -> None:
    """A batch with no valid pixel gives exactly 0 for every term, and a zero, NaN-free gradient."""
    logits = torch.randn(2, num_classes, size, 8, requires_grad=True)
    value = loss(logits, torch.full((2, 8, 8), II))
    value.backward()
    assert value.item() == 0.0
    assert all(v.item() == 0.0 for v in getattr(loss, "last_terms", {}).values())
    assert torch.count_nonzero(logits.grad) == 0 and not torch.isnan(logits.grad).any()


def check_ignored_pixels_change_nothing(loss: nn.Module, num_classes: int = 5) -> None:
    """Logits at ignored pixels change neither the value nor any gradient, and get no gradient."""
    logits, target = make_case((2, num_classes, 9, 10), seed=9, dtype=torch.float64)
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
