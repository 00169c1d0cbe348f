"""Benchmark `focal_dice` against seed 003's `Focal_Loss + Dice_loss`: time and working memory.

    python scripts/bench_losses.py [--shape 8 21 512 512] [--reps 3] [--threads N]

Each measurement runs in its own spawned process. Working memory = peak resident memory (VmHWM)
during forward+backward minus the peak of the same process holding only the logits, their
gradient and the mask. The seed's one-hot target (float32 `(N,H,W,C+1)`, which its dataset
builds per image) is created after the baseline, so it counts as the seed's working memory; its
size is printed separately.
"""

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (VmHWM), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource  # not Linux: fall back to ru_maxrss (KiB on Linux, bytes on macOS)

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- seed 003, re-implemented as it was written (ignore label = num_classes, one-hot target) ---


def seed_focal_loss(inputs, target, cls_weights, num_classes=21, alpha=0.5, gamma=2):
    """Seed 003's Focal_Loss: class weights inside log p, mean over every pixel."""
    import torch.nn.functional as F
    from torch import nn

    n, c, h, w = inputs.size()
    nt, ht, wt = target.size()
    if h != ht and w != wt:
        inputs = F.interpolate(inputs, size=(ht, wt), mode="bilinear", align_corners=True)
    temp_inputs = inputs.transpose(1, 2).transpose(2, 3).contiguous().view(-1, c)
    temp_target = target.view(-1)
    logpt = -nn.CrossEntropyLoss(weight=cls_weights, ignore_index=num_classes, reduction="none")(
        temp_inputs, temp_target
    )
    pt = logpt.exp()
    if alpha is not None:
        logpt = logpt * alpha
    return (-((1 - pt) ** gamma) * logpt).mean()


def seed_dice_loss(inputs, target, beta=1, smooth=1e-5):
    """Seed 003's Dice_loss on a one-hot target `(N,H,W,C+1)` (last channel = ignore)."""
    import torch
    import torch.nn.functional as F

    n, c, h, w = inputs.size()
    nt, ht, wt, ct = target.size()
    if h != ht and w != wt:
        inputs = F.interpolate(inputs, size=(ht, wt), mode="bilinear", align_corners=True)
    temp_inputs = torch.softmax(
        inputs.transpose(1, 2).transpose(2, 3).contiguous().view(n, -1, c), -1
    )
    temp_target = target.view(n, -1, ct)
    tp = torch.sum(temp_target[..., :-1] * temp_inputs, dim=[0, 1])
    fp = torch.sum(temp_inputs, dim=[0, 1]) - tp
    fn = torch.sum(temp_target[..., :-1], dim=[0, 1]) - tp
    score = ((1 + beta**2) * tp + smooth) / ((1 + beta**2) * tp + beta**2 * fn + fp + smooth)
    return 1 - torch.mean(score)


# --- one measurement per process ---


def _inputs(shape, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    logits = torch.randn(shape, generator=g).requires_grad_()
    mask = torch.randint(0, c, (n, h, w), generator=g)
    mask[:, :, :4] = 255  # a border of ignored pixels, as VOC's object outlines
    return logits, mask


def _measure(kind: str, shape: tuple, reps: int, threads: int, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    logits, mask = _inputs(shape)
    n, c = shape[:2]
    if kind == "ours":
        from src.losses.composite import CompositeLoss

        loss_fn = CompositeLoss(255, c, focal={"gamma": 2.0}, dice={})

        def step():
            return loss_fn(logits, mask)
    else:
        weights = torch.ones(c)

        def step():
            return seed_focal_loss(logits, png, weights, c) + seed_dice_loss(logits, onehot)

    # Warm up on a tiny batch so one-off allocations (thread pools, kernels) count for neither.
    small_logits, small_mask = _inputs((1, c, 32, 32))
    small_png = torch.where(small_mask == 255, c, small_mask)
    if kind == "ours":
        loss_fn(small_logits, small_mask).backward()
    else:
        small_onehot = torch.nn.functional.one_hot(small_png, c + 1).float()
        (
            seed_focal_loss(small_logits, small_png, weights, c)
            + seed_dice_loss(small_logits, small_onehot)
        ).backward()
    # Baseline: the process holding the logits, their gradient and the mask. The gradient is then
    # dropped, as `optimizer.zero_grad()` does, and backward allocates it again.
    logits.grad = torch.zeros_like(logits)
    baseline = peak_rss_mib()
    logits.grad = None
    extra_mib = 0.0
    if kind == "seed":
        png = torch.where(mask == 255, c, mask)  # the seed's ignore label is num_classes
        onehot = torch.nn.functional.one_hot(png, c + 1).float()
        extra_mib = (onehot.numel() * 4 + png.numel() * 8) / 2**20

    times, value = [], 0.0
    for _ in range(reps):
        logits.grad = None
        t0 = time.perf_counter()
        out = step()
        out.backward()
        times.append(time.perf_counter() - t0)
        value = out.item()
    queue.put(
        {
            "kind": kind,
            "times": times,
            "work_mib": peak_rss_mib() - baseline,
            "baseline_mib": baseline,
            "target_mib": extra_mib,
            "value": value,
        }
    )


def run(kind: str, shape: tuple, reps: int, threads: int) -> dict:
    """Measure `kind` ('ours' or 'seed') in a fresh spawned process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(kind, shape, reps, threads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    """Parse arguments, run the measurements in alternating rounds, print them side by side."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--shape", type=int, nargs=4, default=[8, 21, 512, 512], metavar=("N", "C", "H", "W")
    )
    parser.add_argument("--reps", type=int, default=2, help="forward+backward passes per process")
    parser.add_argument("--rounds", type=int, default=3, help="seed/ours process pairs, alternated")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    shape = tuple(args.shape)
    print(
        f"focal_dice forward+backward on logits {shape} float32, {args.threads} thread(s), "
        f"{args.rounds} rounds x {args.reps} reps, load average {os.getloadavg()[0]:.1f}"
    )
    rounds = []
    for _ in range(args.rounds):  # alternate so that both see the same background load
        rounds.append({k: run(k, shape, args.reps, args.threads) for k in ("seed", "ours")})
    best = {k: [min(r[k]["times"]) for r in rounds] for k in ("seed", "ours")}
    work = {k: statistics.median(r[k]["work_mib"] for r in rounds) for k in ("seed", "ours")}
    speedups = [s / o for s, o in zip(best["seed"], best["ours"], strict=True)]
    print(f"{'':28}{'seed 003':>12}{'seglab':>12}{'ratio':>10}")
    for i, (s_, o_) in enumerate(zip(best["seed"], best["ours"], strict=True)):
        print(f"{f'time, round {i + 1} (s)':28}{s_:>12.3f}{o_:>12.3f}{s_ / o_:>9.1f}x")
    med = {k: statistics.median(v) for k, v in best.items()}
    print(
        f"{'time, median (s)':28}{med['seed']:>12.3f}{med['ours']:>12.3f}{statistics.median(speedups):>9.1f}x"
    )
    ratio = work["seed"] / max(work["ours"], 1e-9)
    print(f"{'working memory (MiB)':28}{work['seed']:>12.1f}{work['ours']:>12.1f}{ratio:>9.1f}x")
    base = {k: rounds[0][k]["baseline_mib"] for k in ("seed", "ours")}
    print(f"{'baseline peak RSS (MiB)':28}{base['seed']:>12.1f}{base['ours']:>12.1f}")
    print(
        f"seed's one-hot + png target, part of its working memory: {rounds[0]['seed']['target_mib']:.1f} MiB"
    )
    values = {k: rounds[0][k]["value"] for k in ("seed", "ours")}
    print(
        f"loss values (differ by design: the seed averages over ignored pixels and halves focal "
        f"with alpha=0.5): seed {values['seed']:.5f}, seglab {values['ours']:.5f}"
    )


if __name__ == "__main__":
    main()
