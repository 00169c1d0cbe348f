"""Test-only stand-in for src/train.py in sweep tests: the same config and files, no training.

It composes conf/train.yaml from its overrides as src/train.py does, "trains" `trainer.max_epochs`
epochs of `+fake.epoch_s` seconds each, and writes what a seglab run writes that a sweep reads:
`checkpoints/last.ckpt` after every epoch (JSON: the epochs done), `metrics.json` at the end. Its
val/mIoU after epoch e is `+fake.quality` * (e + 1) / max_epochs, so the best trial of a search is
known in advance. Like src/train.py it reports to its Optuna trial after every epoch and stops when
pruned (exit 0), resumes from `ckpt_path`, and on SIGTERM/SIGINT writes last.ckpt and exits 143/130.
`+fake.fail=true` exits 1 as a run with a bad value does; `+fake.kill_at=<epoch>` SIGKILLs itself once
that epoch is checkpointed, unless it was resumed (out of memory, say). `fake.json` records what the
run saw.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from src.sweeps.trial import TrialLink, tell_pruned  # noqa: E402
from src.utils.files import write_json_atomic  # noqa: E402

STEP_S = 0.02
_stop: list[int] = []


def _on_signal(signum: int, frame: object) -> None:
    _stop.append(signum)


def train_one_epoch(seconds: float) -> bool:
    """Sleep through an epoch in small steps; False when a stop signal came."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _stop:
            return False
        time.sleep(STEP_S)
    return not _stop


@hydra.main(version_base="1.3", config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    """Fake a run of `cfg`."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _on_signal)
    fake = cfg.get("fake") or {}
    out = Path(cfg.paths.output_dir)
    if fake.get("fail"):
        raise SystemExit("fake_train: error: this job's value is bad")
    epochs, quality = int(cfg.trainer.max_epochs), float(fake.get("quality", 0.5))
    last = out / "checkpoints" / "last.ckpt"
    start = json.loads(Path(cfg.ckpt_path).read_text())["epoch"] if cfg.get("ckpt_path") else 0
    link = TrialLink.from_env()
    trial = link.open() if link else None
    record = {
        "pid": os.getpid(), "started": time.time(), "start_epoch": start, "ckpt_path": cfg.get("ckpt_path"),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")},
    }  # fmt: skip
    values, pruned, epoch = {}, False, start
    for epoch in range(start, epochs):
        if not train_one_epoch(float(fake.get("epoch_s", 0.1))):
            write_json_atomic(last, {"epoch": epoch})
            write_json_atomic(out / "fake.json", {**record, "stopped_at": epoch, "ended": time.time()})
            sys.exit(128 + _stop[0])
        values[epoch] = quality * (epoch + 1) / epochs
        write_json_atomic(last, {"epoch": epoch + 1})
        if fake.get("kill_at") == epoch and not cfg.get("ckpt_path"):
            os.kill(os.getpid(), signal.SIGKILL)
        if trial is not None:
            trial.report(values[epoch], step=epoch)
            if trial.should_prune():
                pruned = True
                break
    best_epoch = max(values, key=values.get)
    best = {"val/mIoU": values[best_epoch], "epoch": best_epoch}
    final = {"val/mIoU": values[epoch], "val/mIoU_best": values[best_epoch], "epoch": epoch}
    write_json_atomic(out / "metrics.json", {"best": best, "final": final, "monitor": "val/mIoU"})
    write_json_atomic(out / "fake.json", {**record, "epochs_trained": len(values), "pruned": pruned, "ended": time.time()})
    if pruned:
        tell_pruned(trial)


if __name__ == "__main__":
    main()
