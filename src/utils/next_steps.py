"""The last lines of a training run: its result, its best checkpoint and the commands to look at it.

Each command is printed ready to paste into the shell the run was started from: paths are
relative to the working directory where they lie inside it, and quoted where the shell needs it.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

SRC_DIR = Path(__file__).resolve().parents[1]


def shell_path(path: str | os.PathLike[str]) -> str:
    """`path` as the shell should read it: relative to the working directory when inside it, quoted."""
    absolute = Path(path).resolve()
    relative = os.path.relpath(absolute)
    return shlex.quote(absolute.as_posix() if relative.startswith("..") else relative)


def newest_checkpoint(trainer: Any) -> Path | None:
    """The most recently written checkpoint (last or best) of the trainer's ModelCheckpoints, if any.

    By nanosecond mtime: two saves in one step can share a float mtime.
    """
    paths = {
        Path(path)
        for callback in trainer.checkpoint_callbacks
        for path in (getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", ""))
        if path
    }
    return max((p for p in paths if p.is_file()), key=lambda p: p.stat().st_mtime_ns, default=None)


def best_checkpoint(trainer: Any) -> Path | None:
    """The checkpoint of the best monitored score, else the newest one a ModelCheckpoint saved, else None."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor is not None and callback.best_model_path:
            return Path(callback.best_model_path)
    return newest_checkpoint(trainer)


def tensorboard_dir(trainer: Any) -> str | None:
    """The TensorBoard logger's folder, when the run has one."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.log_dir
    return None


def example_input(datamodule: Any) -> Path | None:
    """A folder of images predict.py can read: the one holding the first validation image."""
    try:
        image, _ = datamodule.split_pairs(datamodule.val_split)[0]
    except (AttributeError, IndexError):
        return None
    return Path(image).parent


def next_steps(trainer: Any, datamodule: Any, metrics: Mapping[str, float], output_dir: Path) -> str:
    """The run's closing message: best val/mIoU, output dir, best checkpoint and paste-ready commands."""
    best = metrics.get("val/mIoU_best", float("nan"))
    lines = [f"best val/mIoU = {best:.4f} (output in {shell_path(output_dir)})"]
    checkpoint = best_checkpoint(trainer)
    lines.append(
        f"best checkpoint: {shell_path(checkpoint)}"
        if checkpoint is not None
        else "no checkpoint was saved (callbacks.model_checkpoint and callbacks.last_checkpoint are off)"
    )
    commands = []
    logdir = tensorboard_dir(trainer)
    if logdir is not None:
        commands.append(f"tensorboard --logdir {shell_path(logdir)}")
    if checkpoint is not None:
        ckpt = f"ckpt_path={shell_path(checkpoint)}"
        commands.append(f"python {shell_path(SRC_DIR / 'eval.py')} {ckpt}")
        images = example_input(datamodule)
        input_arg = f"input={shell_path(images)}" if images is not None else "input=<images>"
        commands.append(f"python {shell_path(SRC_DIR / 'predict.py')} {ckpt} {input_arg}")
    if commands:
        lines.append("look at the run:")
        lines.extend(f"  {command}" for command in commands)
    return "\n".join(lines)
