"""Loss time and working memory: seglab's presets on both paths, a one-hot Focal + Dice and F.ce.

    python scripts/bench_losses.py [--shape 8 21 512 512] [--presets focal_dice ...] [--threads N]
    python scripts/bench_losses.py --presets zoo    # the loss zoo: see ZOO below

Rows: `Focal_Loss + Dice_loss` of the one-hot Focal + Dice implementation this project started
from (the baseline of `focal_dice`, row "one-hot focal+dice"), `F.cross_entropy` (the
baseline every term is put next to), and each `--presets` loss as `python src/train.py loss=<name>`
builds it, with `loss.fused=auto` and with `loss.fused=false` (the plain modules). The auto row is
labelled "(fused)" where the preset has a fused form and "(auto: plain)" where it has none, so auto
runs the plain modules too. A preset is `name` or `name:override[:override...]`, e.g.
`ce:loss.ce.label_smoothing=0.1`. Each measurement runs forward+backward in its own spawned process.
Working memory = peak resident memory (VmHWM) during forward+backward minus the peak of the same
process holding only the logits, their gradient and the mask. The one-hot target of that
implementation (float32 `(N,H,W,C+1)`, which its dataset builds per image) is created after the
baseline, so it counts as its working memory; its size is printed separately.
"""

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# `--presets zoo`: every loss family next to F.cross_entropy (docs/benchmarks.md's loss table)
ZOO = ["focal_dice", "tversky", "lovasz", "ohem", "ce:loss.ce.label_smoothing=0.1"]


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (VmHWM), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource  # not Linux: fall back to ru_maxrss (KiB on Linux, bytes on macOS)

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the one-hot Focal + Dice, re-implemented as written (ignore label = num_classes) ---

ONEHOT = "one-hot focal+dice"  # its row in the table


def onehot_focal_loss(inputs, target, cls_weights, num_classes=21, alpha=0.5, gamma=2):
    """Its Focal_Loss: class weights inside log p, mean over every pixel."""
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


def onehot_dice_loss(inputs, target, beta=1, smooth=1e-5):
    """Its Dice_loss on a one-hot target `(N,H,W,C+1)` (last channel = ignore)."""
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


def preset_loss(spec: str, num_classes: int, fused: bool):
    """`loss=<name> <overrides>` (spec `name[:override...]`) as src/train.py builds it, `loss.fused` set."""
    from hydra import compose, initialize_config_dir

    import src  # noqa: F401  (SEGLAB_ROOT for conf/paths)
    from src.utils.build import build_loss

    name, *extra = spec.split(":")
    overrides = [f"loss={name}", f"data.num_classes={num_classes}", f"loss.fused={'auto' if fused else 'false'}"]
    overrides.append(f"data.class_names=[{','.join(f'c{i}' for i in range(num_classes))}]")
    overrides += extra
    conf = Path(__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return build_loss(compose("train", overrides=overrides).loss)


def _loss_function(kind: str, num_classes: int):
    """The loss function `loss(logits, mask)` of a row of the table."""
    import torch

    if kind == ONEHOT:
        weights = torch.ones(num_classes)

        def onehot_focal_dice(logits, mask):
            png = torch.where(mask == 255, num_classes, mask)  # its ignore label is num_classes
            onehot = torch.nn.functional.one_hot(png, num_classes + 1).float()
            return onehot_focal_loss(logits, png, weights, num_classes) + onehot_dice_loss(
                logits, onehot
            )

        return onehot_focal_dice
    if kind == "F.cross_entropy":
        return lambda logits, mask: torch.nn.functional.cross_entropy(logits, mask, ignore_index=255)
    spec, path = kind.rsplit(" (", 1)
    return preset_loss(spec, num_classes, fused=path != "plain)")


def _measure(kind: str, shape: tuple, reps: int, threads: int, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    logits, mask = _inputs(shape)
    n, c = shape[:2]
    loss_fn = _loss_function(kind, c)
    if kind != ONEHOT:

        def step():
            return loss_fn(logits, mask)
    else:
        weights = torch.ones(c)

        def step():
            return onehot_focal_loss(logits, png, weights, c) + onehot_dice_loss(logits, onehot)

    # Warm up on a tiny batch so one-off allocations (thread pools, kernels) count for neither.
    small_logits, small_mask = _inputs((1, c, 32, 32))
    loss_fn(small_logits, small_mask).backward()
    # Baseline: the process holding the logits, their gradient and the mask. The gradient is then
    # dropped, as `optimizer.zero_grad()` does, and backward allocates it again.
    logits.grad = torch.zeros_like(logits)
    baseline = peak_rss_mib()
    logits.grad = None
    extra_mib = 0.0
    if kind == ONEHOT:
        png = torch.where(mask == 255, c, mask)  # its ignore label is num_classes
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
    """Measure the row `kind` in a fresh spawned process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(kind, shape, reps, threads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def kinds(presets: list[str], num_classes: int) -> list[str]:
    """The table's rows: the two baselines, then each preset with loss.fused=auto and plain."""
    rows = [ONEHOT, "F.cross_entropy"]
    for spec in presets:
        auto = "fused" if preset_loss(spec, num_classes, fused=True).is_fused else "auto: plain"
        rows += [f"{spec} ({auto})", f"{spec} (plain)"]
    return rows


def main() -> None:
    """Parse arguments, run the measurements in alternating rounds, print them side by side."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--shape", type=int, nargs=4, default=[8, 21, 512, 512], metavar=("N", "C", "H", "W")
    )
    parser.add_argument(
        "--presets", nargs="+", default=["focal_dice"], help="conf/loss presets, or zoo (ZOO above)"
    )
    parser.add_argument("--reps", type=int, default=2, help="forward+backward passes per process")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every row, alternated")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    shape = tuple(args.shape)
    print(
        f"forward+backward on logits {shape} float32, {args.threads} thread(s), "
        f"{args.rounds} rounds x {args.reps} reps, load average {os.getloadavg()[0]:.1f}"
    )
    presets = [spec for name in args.presets for spec in (ZOO if name == "zoo" else [name])]
    rows = kinds(presets, shape[1])
    rounds = []
    for index in range(args.rounds):  # alternate the order so that all see the same background load
        order = rows if index % 2 == 0 else rows[::-1]
        rounds.append({k: run(k, shape, args.reps, args.threads) for k in order})
    report(rows, rounds)


def report(rows: list[str], rounds: list[dict]) -> None:
    """One line per row: median time, working memory, and both against the baselines."""
    time = {k: statistics.median(min(r[k]["times"]) for r in rounds) for k in rows}
    work = {k: statistics.median(r[k]["work_mib"] for r in rounds) for k in rows}
    width = max(24, *(len(k) + 2 for k in rows))
    header = f"{'':{width}}{'time (s)':>10}{'vs 1-hot':>9}{'vs F.ce':>9}{'memory (MiB)':>14}{'vs 1-hot':>9}{'vs F.ce':>9}"
    print(header)
    for k in rows:
        print(
            f"{k:{width}}{time[k]:>10.3f}{time[ONEHOT] / time[k]:>8.2f}x{time['F.cross_entropy'] / time[k]:>8.2f}x"
            f"{work[k]:>14.1f}{work[ONEHOT] / max(work[k], 1e-9):>8.2f}x"
            f"{work['F.cross_entropy'] / max(work[k], 1e-9):>8.2f}x"
        )
    print("(vs ...: the baseline's time or memory over this row's; above 1 means this row is faster or smaller)")
    print(f"{ONEHOT}'s one-hot + png target, part of its working memory: {rounds[0][ONEHOT]['target_mib']:.1f} MiB")
    values = ", ".join(f"{k} {rounds[0][k]['value']:.5f}" for k in rows)
    print(f"loss values ({ONEHOT} averages over ignored pixels and halves focal with alpha=0.5): {values}")


if __name__ == "__main__":
    main()
