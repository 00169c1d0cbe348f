"""The fused fast path: every term of a composite in one chunked autograd Function.

This is an optimisation behind the plain modules of `src/losses/` (each term's `fused_term()` is
its form here), never the only way to write a loss. The engine walks the logits chunk by chunk,
computes `log_softmax` once per chunk for all terms, accumulates in fp32/fp64 whatever the logits'
dtype, and in backward recomputes the softmax instead of keeping full-size temporaries: the plain
autograd chain keeps several `N*C*H*W` tensors alive (`scripts/bench_losses.py` measures both).
A term here reads a chunk and returns sums (forward) or gradient coefficients (backward).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from src.losses.common import check_inputs, class_counts, compute_dtype, resize_logits

# Pixels per chunk: large enough to amortise Python overhead, small enough that a chunk's
# temporaries (a few C x CHUNK fp32 tensors) stay far below the logits' size.
CHUNK_PIXELS = 1 << 16


class per_instance_cached:  # noqa: N801 (used as a decorator, like functools.cached_property)
    """A per-instance cached property without Python 3.11's class-wide lock.

    `functools.cached_property` holds one lock per attribute for *all* instances while it
    computes, which would serialise the chunk workers on `log_p`.
    """

    def __init__(self, fn: Callable) -> None:
        self.fn, self.name, self.__doc__ = fn, fn.__name__, fn.__doc__

    def __get__(self, obj: object, cls: type | None = None):
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)
        return value


@dataclass
class Batch:
    """Whole-batch facts every term may need: class weights, valid counts, device and dtype."""

    weight: Tensor  # (C,) class weights in the compute dtype (ones when none are given)
    counts: Tensor  # (C,) float64 valid target pixels per class
    num_valid: Tensor  # float64 scalar
    dtype: torch.dtype
    uniform: bool  # no class weights: skip the per-pixel weight lookups

    @per_instance_cached
    def weight_sum_valid(self) -> Tensor:
        """`sum over valid pixels of w_y`, exact because it is computed from integer counts."""
        return (self.counts * self.weight.double()).sum()

    def per_class(self, values: Sequence[float]) -> Tensor:
        """A `(C,)` tensor of `values` on the batch's device in the compute dtype."""
        return torch.tensor(values, dtype=self.dtype, device=self.weight.device)


class Chunk:
    """A block of pixels `(B,C,L)` with its labels; derived tensors are computed once, on demand."""

    def __init__(self, logits: Tensor, target: Tensor, ignore_index: int, batch: Batch) -> None:
        self.logits = logits
        self.valid = target != ignore_index
        self.labels = target.masked_fill(~self.valid, 0).long()
        self.batch = batch

    @per_instance_cached
    def valid_float(self) -> Tensor:
        """Valid-pixel mask as 0/1 in the compute dtype, `(B,L)`."""
        return self.valid.to(self.logits.dtype)

    @per_instance_cached
    def all_valid(self) -> bool:
        """True when the chunk has no ignored pixel (lets backward skip a masking pass)."""
        return not self.logits.is_cuda and bool(self.valid.all())  # no per-chunk sync on GPU

    @per_instance_cached
    def log_p(self) -> Tensor:
        """log_softmax over classes, shared by every softmax term of the composite."""
        return torch.log_softmax(self.logits, dim=1)

    @per_instance_cached
    def p(self) -> Tensor:
        """Softmax probabilities."""
        return self.log_p.exp()

    @per_instance_cached
    def log_p_true(self) -> Tensor:
        """`log p_y` of the true class, `(B,L)`."""
        return self.log_p.gather(1, self.labels.unsqueeze(1)).squeeze(1)

    @per_instance_cached
    def p_true(self) -> Tensor:
        """Softmax probability of the true class, `(B,L)`."""
        return self.log_p_true.exp()

    @per_instance_cached
    def onehot(self) -> Tensor:
        """Boolean `[y == c]`, `(B,C,L)`; chunk-sized, never stored per sample."""
        classes = torch.arange(self.logits.shape[1], device=self.logits.device).view(1, -1, 1)
        return self.labels.unsqueeze(1) == classes

    @per_instance_cached
    def weight_true(self) -> Tensor:
        """Class weight of each pixel's true class, 0 at ignored pixels, `(B,L)`."""
        if self.batch.uniform:
            return self.valid_float
        return self.batch.weight.take(self.labels) * self.valid_float


class GradParts:
    """Gradient coefficients that terms add up before the softmax Jacobian is applied once.

    Softmax terms give `on_log_p_true` (d loss / d log p_y per pixel), per-class `on_log_p`
    (d loss / d log p_c, the same at every valid pixel: label smoothing) and per-class `on_prob`,
    `on_prob_true` (d loss / d p_c = on_prob_c + [c = y] on_prob_true_c at valid pixels); sigmoid
    terms give `on_logits`, d loss / d logits per element.
    """

    def __init__(self) -> None:
        self.on_log_p_true: Tensor | None = None
        self.on_log_p: Tensor | None = None
        self.on_prob: Tensor | None = None
        self.on_prob_true: Tensor | None = None
        self.on_logits: Tensor | None = None

    @staticmethod
    def _sum(old: Tensor | None, new: Tensor) -> Tensor:
        return new if old is None else old + new

    def add_log_p_true(self, coefficient: Tensor) -> None:
        """Add a per-pixel coefficient on `log p_y`."""
        self.on_log_p_true = self._sum(self.on_log_p_true, coefficient)

    def add_log_p(self, per_class: Tensor) -> None:
        """Add a per-class coefficient `(C,)` on `log p_c`, the same at every valid pixel."""
        self.on_log_p = self._sum(self.on_log_p, per_class)

    def add_prob(self, every_valid: Tensor, true_class: Tensor) -> None:
        """Add per-class coefficients on `p_c` (all valid pixels) and on `p_y` (true class)."""
        self.on_prob = self._sum(self.on_prob, every_valid)
        self.on_prob_true = self._sum(self.on_prob_true, true_class)

    def add_logits(self, gradient: Tensor) -> None:
        """Add an element-wise gradient on the logits."""
        self.on_logits = self._sum(self.on_logits, gradient)

    def logits_grad(self, chunk: Chunk, out: Tensor) -> None:
        """Write d loss / d logits for the chunk into `out` `(B,C,L)`."""
        if self.on_log_p_true is None and self.on_prob is None and self.on_log_p is None:
            out.copy_(self.on_logits)
            return
        # d log p_y / dz = onehot - p, and d/dp_c = g_c gives dz_c = p_c (g_c - sum_j p_j g_j);
        # d/dz_j of sum_c a_c log p_c is a_j - p_j sum_c a_c.
        k = self.on_log_p_true
        if k is None:
            k = torch.zeros_like(chunk.log_p_true)
        on_true, per_pixel, p = k, -k, chunk.p
        if self.on_log_p is not None:
            per_pixel = per_pixel - self.on_log_p.sum() * chunk.valid_float
        if self.on_prob is None:
            torch.mul(p, per_pixel.unsqueeze(1), out=out)
        else:
            prob_true_part = chunk.p_true * self.on_prob_true.take(chunk.labels)
            per_pixel = per_pixel - torch.einsum("bcl,c->bl", p, self.on_prob) - prob_true_part
            on_true = on_true + prob_true_part * chunk.valid_float
            torch.mul(p, self.on_prob.view(1, -1, 1), out=out)
            out.addcmul_(p, per_pixel.unsqueeze(1))
            if not chunk.all_valid:  # k and on_true are 0 at ignored pixels already; the rest is not
                out.mul_(chunk.valid_float.unsqueeze(1))
        if self.on_log_p is not None:
            out.addcmul_(self.on_log_p.view(1, -1, 1), chunk.valid_float.unsqueeze(1))
        out.scatter_add_(1, chunk.labels.unsqueeze(1), on_true.unsqueeze(1))
        if self.on_logits is not None:
            out.add_(self.on_logits)


class FusedTerm:
    """Interface of a term run by the engine (see terms.py)."""

    def chunk_stats(self, chunk: Chunk) -> Tensor:
        """Sums over the chunk's valid pixels that `value` needs, as a 1-D tensor."""
        raise NotImplementedError

    def value(self, stats: Tensor, batch: Batch) -> Tensor:
        """The term's loss from whole-batch `stats` (float64)."""
        raise NotImplementedError

    def chunk_grad(self, chunk: Chunk, stats: Tensor, grad_out: Tensor, parts: GradParts) -> None:
        """Add this term's gradient coefficients for the chunk, scaled by `grad_out`."""
        raise NotImplementedError


Block = tuple[int, int, int, int]


def blocks(shape: torch.Size, chunk_pixels: int) -> Iterator[Block]:
    """Yield `(n0, n1, r0, r1)` blocks over samples and the first spatial dim."""
    n, rows = shape[0], shape[2]
    inner = 1
    for size in shape[3:]:
        inner *= size
    if rows * inner <= chunk_pixels:
        step = max(1, chunk_pixels // (rows * inner))
        for n0 in range(0, n, step):
            yield n0, min(n, n0 + step), 0, rows
        return
    step = max(1, chunk_pixels // inner)
    for i in range(n):
        for r0 in range(0, rows, step):
            yield i, i + 1, r0, min(rows, r0 + step)


_POOL: dict[int, ThreadPoolExecutor] = {}
os.register_at_fork(after_in_child=_POOL.clear)  # a forked child has none of the pool's threads


def _one_thread() -> None:
    torch.set_num_threads(1)  # thread-local under OpenMP: the caller keeps its setting


def map_blocks(fn: Callable, items: list, device: torch.device) -> list:
    """`[fn(b) for b in items]`, on CPU spread over `torch.get_num_threads()` worker threads.

    A chunk's tensors are a few MB, so one OpenMP fork/join per op costs more than it gains,
    badly so on a busy machine; whole chunks per single-threaded worker scale instead.
    """
    workers = min(torch.get_num_threads(), len(items))
    if device.type != "cpu" or workers <= 1:
        return [fn(b) for b in items]
    pool = _POOL.get(workers)
    if pool is None:
        pool = _POOL[workers] = ThreadPoolExecutor(workers, "seglab-loss", _one_thread)
    inference = torch.is_inference_mode_enabled()

    def run(block):  # grad and inference modes are thread-local: carry the caller's
        with torch.inference_mode(inference), torch.no_grad():
            return fn(block)

    return list(pool.map(run, items))


def _flat_view(t: Tensor) -> Tensor | None:
    """`t` `(B,C,r,*)` viewed as `(B,C,L)` without a copy, or None when its strides forbid it."""
    try:
        return t.view(t.shape[0], t.shape[1], -1)
    except RuntimeError:
        return None


def _chunk(logits: Tensor, target: Tensor, block: Block, ignore_index: int, batch: Batch) -> Chunk:
    n0, n1, r0, r1 = block
    x = logits[n0:n1, :, r0:r1].to(batch.dtype).reshape(n1 - n0, logits.shape[1], -1)
    return Chunk(x, target[n0:n1, r0:r1].reshape(n1 - n0, -1), ignore_index, batch)


class _FusedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, weight, ignore_index, terms, chunk_pixels):
        # the engine picks its own precision (fp32/fp64 sums); autocast would put the
        # per-class reductions (bmm) in half precision
        with torch.autocast(logits.device.type, enabled=False):
            return _FusedLoss._forward(ctx, logits, target, weight, ignore_index, terms, chunk_pixels)

    @staticmethod
    def _forward(ctx, logits, target, weight, ignore_index, terms, chunk_pixels):
        classes = logits.shape[1]
        dtype = compute_dtype(logits)
        w = torch.ones(classes, device=logits.device) if weight is None else weight
        counts = class_counts(target, classes, ignore_index)
        batch = Batch(w.to(logits.device, dtype), counts, counts.sum(), dtype, weight is None)

        def stats(block: Block) -> list[Tensor]:
            chunk = _chunk(logits, target, block, ignore_index, batch)
            return [term.chunk_stats(chunk).double() for term in terms]

        per_block = map_blocks(stats, list(blocks(logits.shape, chunk_pixels)), logits.device)
        sums = [torch.stack(s).sum(0) for s in zip(*per_block, strict=True)]  # fixed order
        values = torch.stack([t.value(s, batch) for t, s in zip(terms, sums, strict=True)])
        ctx.save_for_backward(logits, target)
        ctx.batch, ctx.sums, ctx.terms = batch, sums, terms
        ctx.ignore_index, ctx.chunk_pixels = ignore_index, chunk_pixels
        return values.to(dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_values):
        with torch.autocast(grad_values.device.type, enabled=False):
            return _FusedLoss._backward(ctx, grad_values)

    @staticmethod
    def _backward(ctx, grad_values):
        logits, target = ctx.saved_tensors
        grad = torch.empty_like(logits)
        grad_out = grad_values.to(torch.float64)

        def write_grad(block: Block) -> None:
            chunk = _chunk(logits, target, block, ctx.ignore_index, ctx.batch)
            parts = GradParts()
            for i, term in enumerate(ctx.terms):
                term.chunk_grad(chunk, ctx.sums[i], grad_out[i], parts)
            n0, n1, r0, r1 = block
            target_view = grad[n0:n1, :, r0:r1]
            out = _flat_view(target_view) if grad.dtype == chunk.logits.dtype else None
            if out is None:  # bf16/fp16 logits, or a layout that does not flatten: copy once
                out = torch.empty_like(chunk.logits)
                parts.logits_grad(chunk, out)
                target_view.copy_(out.view(target_view.shape))
            else:
                parts.logits_grad(chunk, out)

        map_blocks(write_grad, list(blocks(logits.shape, ctx.chunk_pixels)), logits.device)
        return grad, None, None, None, None, None


def fused_terms(
    logits: Tensor,
    target: Tensor,
    terms: Sequence[FusedTerm],
    weight: Tensor | None = None,
    ignore_index: int = 255,
    chunk_pixels: int = CHUNK_PIXELS,
) -> Tensor:
    """Values `(T,)` of `terms` on logits `(N,C,*)` and mask `(N,*)`, resizing logits if needed."""
    check_inputs(logits, target)
    logits = resize_logits(logits, target.shape[1:])
    if logits.dim() == 2:  # (N,C) classification-shaped input: one "pixel" per sample
        logits, target = logits.unsqueeze(-1), target.unsqueeze(-1)
    if weight is not None and weight.numel() != logits.shape[1]:
        raise ValueError(f"class weight has {weight.numel()} values for {logits.shape[1]} classes")
    return _FusedLoss.apply(logits, target, weight, int(ignore_index), tuple(terms), chunk_pixels)
