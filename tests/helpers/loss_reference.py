"""Independent float64 references for the loss terms, written with plain per-pixel loops.

They follow the issues' definitions literally (tp/fp/fn counted pixel by pixel, BCE as
-[y log q + (1-y) log(1-q)]), not the implementations' algebra, so a shared mistake is unlikely.
`II` is the ignore index every reference skips.
"""

from __future__ import annotations

import math

import numpy as np
import torch

II = 255


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


def ref_ce_sum(logits, target, weight=None) -> float:
    """Caffe's `normalize: false`: the sum of `w_y * -log p_y` over valid pixels."""
    return sum(
        _w(weight, y) * -math.log(_softmax(row)[y]) for row, y in _pixels(logits, target) if y != II
    )


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
        normalize = args.get("normalize", True)
        return ref_ce(logits, target, weight) if normalize else ref_ce_sum(logits, target, weight)
    if name == "bce":
        return ref_bce(logits, target, weight)
    if name == "focal":
        fn = ref_focal_softmax if args.get("mode", "softmax") == "softmax" else ref_focal_sigmoid
        return fn(logits, target, args.get("gamma", 2.0), args.get("alpha"), weight)
    keys = ("smooth", "beta", "classes")
    return ref_dice(logits, target, weight=weight, **{k: args[k] for k in keys if k in args})


def make_case(shape, seed=0, dtype=torch.float32, ignore_frac=0.25, absent=None):
    """Random logits and a mask with ignored pixels; class `absent` (default: the last) never occurs."""
    absent = shape[1] - 1 if absent is None else absent
    g = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
    target = torch.randint(0, absent, (shape[0], *shape[2:]), generator=g)
    target[torch.rand(target.shape, generator=g) < ignore_frac] = II
    return logits, target


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)
