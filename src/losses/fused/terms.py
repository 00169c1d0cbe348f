"""The fused forms of CE, focal (softmax and sigmoid, BCE = sigmoid with gamma 0), Dice and Tversky.

Each gives the same value and gradient as its plain module (tests/test_losses.py compares them);
the maths and its semantics are documented in the plain module's file (ce.py, focal.py, dice.py,
tversky.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from src.losses.common import safe_div
from src.losses.fused.engine import Batch, Chunk, FusedTerm, GradParts


def focal_value(log_p: Tensor, one_minus_p: Tensor, gamma: float) -> Tensor:
    """`(1 - p)^gamma * -log p`, given `log p` and `1 - p`."""
    if gamma == 0:
        return -log_p
    return one_minus_p.clamp_min(0).pow(gamma) * -log_p


def focal_dlogp(log_p: Tensor, one_minus_p: Tensor, gamma: float) -> Tensor:
    """Derivative of `focal_value` with respect to `log p`, given `log p` and `1 - p`."""
    if gamma == 0:
        return torch.full_like(log_p, -1.0)
    # d/dl [-(1 - e^l)^g l] = -(1 - p)^g + g p l (1 - p)^(g - 1); the second part tends to 0
    # as p -> 1 but is 0 * inf there in floating point for gamma < 1, so it is masked.
    one_minus_p = one_minus_p.clamp_min(0)
    if gamma >= 1:
        return gamma * (1 - one_minus_p) * log_p * one_minus_p.pow(gamma - 1) - one_minus_p.pow(gamma)
    positive = one_minus_p > 0
    safe = torch.where(positive, one_minus_p, 1.0)
    tail = torch.where(positive, gamma * (1 - one_minus_p) * log_p * safe.pow(gamma - 1), 0.0)
    return tail - one_minus_p.pow(gamma)


@dataclass(frozen=True)
class CETerm(FusedTerm):
    """`sum w_y * -log p_y`, divided by `sum w_y` when `normalize` (0 when no pixel is valid).

    With `label_smoothing=eps` each valid pixel gives `(1 - eps) w_y (-log p_y) + eps / C sum_c
    w_c (-log p_c)`, divided by the same `sum w_y` (torch's normalisation).
    """

    normalize: bool = True
    label_smoothing: float = 0.0

    def chunk_stats(self, chunk: Chunk) -> Tensor:
        """Sum of `w_y * -log p_y` over the chunk's valid pixels, then (smoothing) of `sum_c w_c -log p_c`."""
        true_class = -torch.dot(chunk.weight_true.reshape(-1), chunk.log_p_true.reshape(-1))
        if self.label_smoothing == 0:
            return true_class.reshape(1)
        every_class = -torch.einsum("bcl,c->bl", chunk.log_p, chunk.batch.weight)
        # masked, not multiplied: an ignored pixel's log p may be anything, even -inf
        return torch.stack([true_class, every_class.masked_fill(~chunk.valid, 0).sum()])

    def _normaliser(self, batch: Batch) -> Tensor:
        return batch.weight_sum_valid if self.normalize else torch.ones((), dtype=torch.float64)

    def value(self, stats: Tensor, batch: Batch) -> Tensor:
        """Divide by `sum w_y`, as torch's weighted mean does (or keep the sum)."""
        total = stats[0]
        if self.label_smoothing:
            eps = self.label_smoothing
            total = (1 - eps) * stats[0] + eps / batch.weight.numel() * stats[1]
        return safe_div(total, self._normaliser(batch))

    def chunk_grad(self, chunk: Chunk, stats: Tensor, grad_out: Tensor, parts: GradParts) -> None:
        """d/d log p_y = -(1 - eps) w_y / sum w_y, and d/d log p_c = -eps / C w_c / sum w_y (or no division)."""
        scale = safe_div(grad_out, self._normaliser(chunk.batch)).to(chunk.logits.dtype)
        eps = self.label_smoothing
        parts.add_log_p_true(-scale * (1 - eps) * chunk.weight_true)
        if eps:
            parts.add_log_p(-scale * eps / chunk.logits.shape[1] * chunk.batch.weight)


@dataclass(frozen=True)
class FocalTerm(FusedTerm):
    """Focal term; `alpha` is None (1), a scalar or a per-class tuple."""

    gamma: float = 2.0
    alpha: float | tuple[float, ...] | None = None
    mode: str = "softmax"

    def _alpha(self, batch: Batch, num_classes: int) -> Tensor | None:
        if self.alpha is None:
            return None
        values = self.alpha if isinstance(self.alpha, tuple) else (self.alpha,) * num_classes
        return batch.per_class(values)

    def _softmax_weight(self, chunk: Chunk) -> Tensor:
        alpha = self._alpha(chunk.batch, chunk.logits.shape[1])
        return chunk.weight_true if alpha is None else chunk.weight_true * alpha.take(chunk.labels)

    def _sigmoid_parts(self, chunk: Chunk) -> tuple[Tensor, Tensor]:
        """Signed logit `u` (so that q_t = sigmoid(u)) and `w_c * a_t`, zero at ignored pixels."""
        signed = torch.where(chunk.onehot, chunk.logits, -chunk.logits)
        classes = chunk.logits.shape[1]
        weight = chunk.valid_float.unsqueeze(1)
        if not chunk.batch.uniform:
            weight = chunk.batch.weight.view(1, classes, 1) * weight
        alpha = self._alpha(chunk.batch, classes)
        if alpha is not None:
            per_class = alpha.view(1, classes, 1)
            weight = weight * torch.where(chunk.onehot, per_class, 1 - per_class)
        return signed, weight

    def chunk_stats(self, chunk: Chunk) -> Tensor:
        """Sum of the unnormalised focal terms over the chunk's valid pixels."""
        if self.mode == "softmax":
            per_pixel = focal_value(chunk.log_p_true, 1 - chunk.p_true, self.gamma)
            weight = self._softmax_weight(chunk)
            return torch.dot(weight.reshape(-1), per_pixel.reshape(-1)).reshape(1)
        signed, weight = self._sigmoid_parts(chunk)
        per_element = focal_value(F.logsigmoid(signed), torch.sigmoid(-signed), self.gamma)
        return (weight * per_element).sum().reshape(1)

    def _normaliser(self, batch: Batch) -> Tensor:
        if self.mode == "softmax":
            return batch.weight_sum_valid
        return batch.num_valid * batch.weight.double().sum()

    def value(self, stats: Tensor, batch: Batch) -> Tensor:
        """Normalise the sum (see focal.py)."""
        return safe_div(stats[0], self._normaliser(batch))

    def chunk_grad(self, chunk: Chunk, stats: Tensor, grad_out: Tensor, parts: GradParts) -> None:
        """Softmax: a coefficient on log p_y; sigmoid: an element-wise logit gradient."""
        scale = safe_div(grad_out, self._normaliser(chunk.batch)).to(chunk.logits.dtype)
        if self.mode == "softmax":
            dlogp = focal_dlogp(chunk.log_p_true, 1 - chunk.p_true, self.gamma)
            parts.add_log_p_true(scale * self._softmax_weight(chunk) * dlogp)
            return
        signed, weight = self._sigmoid_parts(chunk)
        # d log sigmoid(u) / du = sigmoid(-u); du / dx = +1 on the true class, -1 elsewhere
        one_minus_q = torch.sigmoid(-signed)  # exact where q_t is close to 1
        grad = scale * weight * focal_dlogp(F.logsigmoid(signed), one_minus_q, self.gamma) * one_minus_q
        parts.add_logits(torch.where(chunk.onehot, grad, -grad))


def soft_overlap(chunk: Chunk) -> Tensor:
    """`tp_c = sum p_c [y = c]` and `P_c = sum p_c` over the chunk's valid pixels, concatenated `(2C,)`."""
    valid = chunk.valid_float
    tp = torch.zeros(chunk.logits.shape[1], dtype=chunk.logits.dtype, device=chunk.logits.device)
    tp.index_add_(0, chunk.labels.reshape(-1), (chunk.p_true * valid).reshape(-1))
    return torch.cat([tp, torch.einsum("bcl,bl->c", chunk.p, valid)])


def weights_in_k(batch: Batch, classes: str) -> tuple[Tensor, Tensor]:
    """Class weights restricted to K (present classes, or all) and their sum, 0 with no valid pixel."""
    weights = batch.weight.double()
    if classes == "present":
        weights = weights * (batch.counts > 0)
    return weights, torch.where(batch.num_valid > 0, weights.sum(), 0.0)


@dataclass(frozen=True)
class DiceTerm(FusedTerm):
    """F-beta Dice over classes K: those present in the batch's valid targets, or all."""

    smooth: float = 1e-5
    beta: float = 1.0
    classes: str = "present"

    def chunk_stats(self, chunk: Chunk) -> Tensor:
        """`tp` and `P` per class, concatenated `(2C,)`."""
        return soft_overlap(chunk)

    def _parts(self, stats: Tensor, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Numerator, denominator, class weights restricted to K, and their sum (float64)."""
        tp, prob_sum = stats.chunk(2)
        b2 = self.beta**2
        num = (1 + b2) * tp + self.smooth
        den = b2 * batch.counts + prob_sum + self.smooth
        return num, den, *weights_in_k(batch, self.classes)

    def value(self, stats: Tensor, batch: Batch) -> Tensor:
        """`1 - weighted mean score over K`; exactly 0 when no pixel is valid."""
        num, den, weights, weight_sum = self._parts(stats, batch)
        score = safe_div(num, den)
        return torch.where(weight_sum > 0, 1 - safe_div((weights * score).sum(), weight_sum), 0.0)

    def chunk_grad(self, chunk: Chunk, stats: Tensor, grad_out: Tensor, parts: GradParts) -> None:
        """Coefficients on `P_c` (every valid pixel) and on `tp` (the true class)."""
        num, den, weights, weight_sum = self._parts(stats, chunk.batch)
        safe_den = torch.where(den > 0, den, 1.0)
        scale = safe_div(grad_out, weight_sum)
        d_tp = -scale * weights * (1 + self.beta**2) / safe_den
        d_prob = scale * weights * num / safe_den**2
        parts.add_prob(d_prob.to(chunk.logits.dtype), d_tp.to(chunk.logits.dtype))


def focal_power(one_minus_index: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """`(1 - TI)^gamma` and its derivative in TI, both 0 where `1 - TI <= 0` (TI = 1 is the minimum)."""
    positive = one_minus_index > 0
    base = torch.where(positive, one_minus_index, 1.0)  # pow's gradient at 0 is inf for gamma < 1
    value = torch.where(positive, base.pow(gamma), 0.0)
    slope = torch.where(positive, -gamma * base.pow(gamma - 1), 0.0)
    return value, slope


@dataclass(frozen=True)
class TverskyTerm(FusedTerm):
    """(Focal) Tversky over classes K; Dice's sums, with `fp = P - tp` and `fn = n - tp`."""

    alpha: float = 0.3
    beta: float = 0.7
    gamma: float = 1.0
    smooth: float = 1e-5
    classes: str = "present"

    def chunk_stats(self, chunk: Chunk) -> Tensor:
        """`tp` and `P` per class, concatenated `(2C,)`."""
        return soft_overlap(chunk)

    def _index(self, stats: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """Numerator `tp + s` and denominator `tp + alpha fp + beta fn + s` of TI, float64 `(C,)`."""
        tp, prob_sum = stats.chunk(2)
        num = tp + self.smooth
        den = (1 - self.alpha - self.beta) * tp + self.alpha * prob_sum + self.beta * batch.counts
        return num, den + self.smooth

    def value(self, stats: Tensor, batch: Batch) -> Tensor:
        """Weighted mean of `(1 - TI)^gamma` over K; exactly 0 when no pixel is valid."""
        num, den = self._index(stats, batch)
        per_class, _ = focal_power(1 - safe_div(num, den), self.gamma)
        weights, weight_sum = weights_in_k(batch, self.classes)
        return safe_div((weights * per_class).sum(), weight_sum)

    def chunk_grad(self, chunk: Chunk, stats: Tensor, grad_out: Tensor, parts: GradParts) -> None:
        """Coefficients on `P_c` (every valid pixel) and on `tp` (the true class), by the chain rule."""
        num, den = self._index(stats, chunk.batch)
        _, slope = focal_power(1 - safe_div(num, den), self.gamma)
        weights, weight_sum = weights_in_k(chunk.batch, self.classes)
        defined = den > 0  # TI is taken as 0 where its denominator is 0, a constant
        on_index = safe_div(grad_out, weight_sum) * weights * slope * defined
        safe_den = torch.where(defined, den, 1.0)
        # TI = num / den with d num / d tp = 1, d den / d tp = 1 - alpha - beta, d den / d P = alpha
        d_tp = on_index * (den - num * (1 - self.alpha - self.beta)) / safe_den**2
        d_prob = -on_index * num * self.alpha / safe_den**2
        parts.add_prob(d_prob.to(chunk.logits.dtype), d_tp.to(chunk.logits.dtype))
