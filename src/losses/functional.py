"""Shared engine of the loss terms: input checks, resizing, and one fused, chunked autograd Function.

Every term (CE, focal, Dice, BCE) is a small object that reads a chunk of pixels and returns
sums (forward) or gradient coefficients (backward). The engine walks the logits chunk by chunk,
computes `log_softmax` once per chunk for all terms, accumulates in fp32/fp64 whatever the
logits' dtype, and in backward recomputes the softmax instead of keeping full-size temporaries
(issue 4: the seed's autograd chain of `N*C*H*W` tensors costs several times the logits' memory).
"""

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from src.utils.errors import UserError

# Pixels per chunk: large enough to amortise Python overhead, small enough that a chunk's
# temporaries (a few C x CHUNK fp32 tensors) stay far below the logits' size.
CHUNK_PIXELS = 1 << 16

_INTERP_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


class LossConfigError(UserError, ValueError):
    """A bad `loss.*` config value; the message names the key and what was expected."""


def resize_logits(logits: Tensor, size: Sequence[int]) -> Tensor:
    """Resize `(N,C,*)` logits to spatial `size` (bilinear/trilinear, align_corners=False)."""
    if tuple(logits.shape[2:]) == tuple(size):
        return logits
    mode = _INTERP_MODES.get(len(size))
    if mode is None:
        raise ValueError(f"cannot resize logits with {len(size)} spatial dims to {tuple(size)}")
    return F.interpolate(logits, size=tuple(size), mode=mode, align_corners=False)


def check_inputs(logits: Tensor, target: Tensor) -> None:
    """Raise ValueError unless logits are float `(N,C,*)` and target holds int labels `(N,*)`."""
    if not logits.is_floating_point() or logits.dim() < 2:
        raise ValueError(f"logits must be float (N,C,*), got {logits.dtype} {tuple(logits.shape)}")
    if target.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16):
        raise ValueError(f"mask must hold integer class indices, got {target.dtype}")
    if target.dim() != logits.dim() - 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"mask shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}: "
            "expected logits (N,C,*) and mask (N,*)"
        )


def class_counts(target: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """Valid pixels per class `(C,)` float64; raises ValueError for labels that are not classes."""
    labels = torch.where(target == ignore_index, -1, target.long()).reshape(-1)
    if labels.numel():
        low, high = (int(v) for v in torch.aminmax(labels))
        stray_minus_one = low == -1 and ignore_index != -1 and bool((target == -1).any())
        if low < -1 or high >= num_classes or stray_minus_one:
            bad = labels[(labels < -1) | (labels >= num_classes)]
            value = int(bad[0]) if bad.numel() else -1
            raise ValueError(
                f"mask holds label {value}, outside [0, {num_classes}) "
                f"and not ignore_index={ignore_index}"
            )
    return torch.bincount(labels + 1, minlength=num_classes + 1)[1:].double()


class lazy:
    """A per-instance cached property without Python 3.11's class-wide lock.

    `functools.cached_property` holds one lock per attribute for *all* instances while it
    computes, which would serialise the chunk workers on `logp`.
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

    @lazy
    def weight_sum_valid(self) -> Tensor:
        """`sum over valid pixels of w_y`, exact because it is computed from integer counts."""
        return (self.counts * self.weight.double()).sum()

    def per_class(self, values: Sequence[float]) -> Tensor:
        """A `(C,)` tensor of `values` on the batch's device in the compute dtype."""
        return torch.tensor(values, dtype=self.dtype, device=self.weight.device)


class Chunk:
    """A block of pixels `(B,C,L)` with its labels; derived tensors are computed once, on demand."""

    def __init__(self, x: Tensor, y: Tensor, ignore_index: int, batch: Batch) -> None:
        self.x = x
        self.valid = y != ignore_index
        self.y = y.masked_fill(~self.valid, 0).long()
        self.batch = batch

    @lazy
    def vf(self) -> Tensor:
        """Valid-pixel mask as 0/1 in the compute dtype, `(B,L)`."""
        return self.valid.to(self.x.dtype)

    @lazy
    def all_valid(self) -> bool:
        """True when the chunk has no ignored pixel (lets backward skip a masking pass)."""
        return not self.x.is_cuda and bool(self.valid.all())  # no per-chunk host sync on GPU

    @lazy
    def logp(self) -> Tensor:
        """log_softmax over classes, shared by every softmax term of the composite."""
        return torch.log_softmax(self.x, dim=1)

    @lazy
    def p(self) -> Tensor:
        """Softmax probabilities."""
        return self.logp.exp()

    @lazy
    def logp_true(self) -> Tensor:
        """`log p_y` of the true class, `(B,L)`."""
        return self.logp.gather(1, self.y.unsqueeze(1)).squeeze(1)

    @lazy
    def p_true(self) -> Tensor:
        """Softmax probability of the true class, `(B,L)`."""
        return self.logp_true.exp()

    @lazy
    def onehot(self) -> Tensor:
        """Boolean `[y == c]`, `(B,C,L)`; chunk-sized, never stored per sample."""
        classes = torch.arange(self.x.shape[1], device=self.x.device).view(1, -1, 1)
        return self.y.unsqueeze(1) == classes

    @lazy
    def weight_true(self) -> Tensor:
        """Class weight of each pixel's true class, 0 at ignored pixels, `(B,L)`."""
        if self.batch.uniform:
            return self.vf
        return self.batch.weight.take(self.y) * self.vf


class GradParts:
    """Gradient coefficients that terms add up before the softmax Jacobian is applied once.

    Softmax terms give `k` (d loss / d log p_y per pixel) and per-class `a`, `b`
    (d loss / d p_c = a_c + [c = y] b_c at valid pixels); sigmoid terms give `direct`,
    d loss / d logits per element.
    """

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.a: Tensor | None = None
        self.b: Tensor | None = None
        self.direct: Tensor | None = None

    @staticmethod
    def _add(old: Tensor | None, new: Tensor) -> Tensor:
        return new if old is None else old + new

    def add_k(self, k: Tensor) -> None:
        """Add a per-pixel coefficient on `log p_y`."""
        self.k = self._add(self.k, k)

    def add_ab(self, a: Tensor, b: Tensor) -> None:
        """Add per-class coefficients on `p_c` (all valid pixels) and on `p_y` (true class)."""
        self.a, self.b = self._add(self.a, a), self._add(self.b, b)

    def add_direct(self, g: Tensor) -> None:
        """Add an element-wise gradient on the logits."""
        self.direct = self._add(self.direct, g)

    def logits_grad(self, ch: Chunk, out: Tensor) -> None:
        """Write d loss / d logits for the chunk into `out` `(B,C,L)`."""
        if self.k is None and self.a is None:
            out.copy_(self.direct)
            return
        # d log p_y / dz = onehot - p, and d/dp_c = g_c gives dz_c = p_c (g_c - sum_j p_j g_j).
        k = torch.zeros_like(ch.logp_true) if self.k is None else self.k
        on_true, per_pixel = k, -k
        p = ch.p
        if self.a is None:
            torch.mul(p, per_pixel.unsqueeze(1), out=out)
        else:
            pb = ch.p_true * self.b.take(ch.y)
            per_pixel = per_pixel - torch.einsum("bcl,c->bl", p, self.a) - pb
            on_true = on_true + pb * ch.vf
            torch.mul(p, self.a.view(1, -1, 1), out=out)
            out.addcmul_(p, per_pixel.unsqueeze(1))
            if not ch.all_valid:  # k and on_true are already 0 at ignored pixels; the rest is not
                out.mul_(ch.vf.unsqueeze(1))
        out.scatter_add_(1, ch.y.unsqueeze(1), on_true.unsqueeze(1))
        if self.direct is not None:
            out.add_(self.direct)


class Term:
    """Interface of a loss term run by the engine; see ce.py, focal.py, dice.py, bce.py."""

    name: str = "term"

    def chunk_stats(self, ch: Chunk) -> Tensor:
        """Sums over the chunk's valid pixels that `value` needs, as a 1-D tensor."""
        raise NotImplementedError

    def value(self, stats: Tensor, batch: Batch) -> Tensor:
        """The term's loss from whole-batch `stats` (float64)."""
        raise NotImplementedError

    def chunk_grad(self, ch: Chunk, stats: Tensor, grad_out: Tensor, parts: GradParts) -> None:
        """Add this term's gradient coefficients for the chunk, scaled by `grad_out`."""
        raise NotImplementedError


def _chunks(shape: torch.Size, chunk_pixels: int):
    """Yield `(n0, n1, r0, r1)` blocks over samples and the first spatial dim."""
    n, rows = shape[0], shape[2]
    inner = 1
    for s in shape[3:]:
        inner *= s
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


def _map_blocks(fn: Callable, blocks: list, device: torch.device) -> list:
    """`[fn(b) for b in blocks]`, on CPU spread over `torch.get_num_threads()` worker threads.

    A chunk's tensors are a few MB, so one OpenMP fork/join per op costs more than it gains,
    badly so on a busy machine; whole chunks per single-threaded worker scale instead.
    """
    workers = min(torch.get_num_threads(), len(blocks))
    if device.type != "cpu" or workers <= 1:
        return [fn(b) for b in blocks]
    pool = _POOL.get(workers)
    if pool is None:
        pool = _POOL[workers] = ThreadPoolExecutor(workers, "seglab-loss", _one_thread)
    inference = torch.is_inference_mode_enabled()

    def run(block):  # grad and inference modes are thread-local: carry the caller's
        with torch.inference_mode(inference), torch.no_grad():
            return fn(block)

    return list(pool.map(run, blocks))


def _flat_view(t: Tensor) -> Tensor | None:
    """`t` `(B,C,r,*)` viewed as `(B,C,L)` without a copy, or None when its strides forbid it."""
    try:
        return t.view(t.shape[0], t.shape[1], -1)
    except RuntimeError:
        return None


def _compute_dtype(logits: Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _chunk(logits: Tensor, target: Tensor, block: tuple, ii: int, batch: Batch) -> Chunk:
    n0, n1, r0, r1 = block
    x = logits[n0:n1, :, r0:r1].to(batch.dtype).reshape(n1 - n0, logits.shape[1], -1)
    return Chunk(x, target[n0:n1, r0:r1].reshape(n1 - n0, -1), ii, batch)


class _FusedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, weight, ignore_index, terms, chunk_pixels):
        # the engine picks its own precision (fp32/fp64 sums); autocast would put the
        # per-class reductions (bmm) in half precision
        with torch.autocast(logits.device.type, enabled=False):
            return _FusedLoss._forward(
                ctx, logits, target, weight, ignore_index, terms, chunk_pixels
            )

    @staticmethod
    def _forward(ctx, logits, target, weight, ignore_index, terms, chunk_pixels):
        c = logits.shape[1]
        dtype = _compute_dtype(logits)
        w = torch.ones(c, device=logits.device) if weight is None else weight
        counts = class_counts(target, c, ignore_index)
        batch = Batch(w.to(logits.device, dtype), counts, counts.sum(), dtype, weight is None)

        def stats(block: tuple) -> list[Tensor]:
            ch = _chunk(logits, target, block, ignore_index, batch)
            return [term.chunk_stats(ch).double() for term in terms]

        per_block = _map_blocks(stats, list(_chunks(logits.shape, chunk_pixels)), logits.device)
        sums = [torch.stack(s).sum(0) for s in zip(*per_block, strict=True)]  # fixed order
        values = torch.stack([t.value(s, batch) for t, s in zip(terms, sums, strict=True)])
        ctx.save_for_backward(logits, target)
        ctx.batch, ctx.sums, ctx.terms, ctx.ii, ctx.chunk = (
            batch,
            sums,
            terms,
            ignore_index,
            chunk_pixels,
        )
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
        go = grad_values.to(torch.float64)

        def write_grad(block: tuple) -> None:
            ch = _chunk(logits, target, block, ctx.ii, ctx.batch)
            parts = GradParts()
            for i, term in enumerate(ctx.terms):
                term.chunk_grad(ch, ctx.sums[i], go[i], parts)
            n0, n1, r0, r1 = block
            target_view = grad[n0:n1, :, r0:r1]
            out = _flat_view(target_view) if grad.dtype == ch.x.dtype else None
            if out is None:  # bf16/fp16 logits, or a layout that does not flatten: copy once
                out = torch.empty_like(ch.x)
                parts.logits_grad(ch, out)
                target_view.copy_(out.view(target_view.shape))
            else:
                parts.logits_grad(ch, out)

        _map_blocks(write_grad, list(_chunks(logits.shape, ctx.chunk)), logits.device)
        return grad, None, None, None, None, None


def fused_terms(
    logits: Tensor,
    target: Tensor,
    terms: Sequence[Term],
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


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """`num / den`, or exactly 0 where `den` is 0 (all-ignored batches must not give NaN)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)
