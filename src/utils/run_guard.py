"""A run resumes only when asked, and never touches another run's output dir.

Without this, a run started in a dir that holds another run's `last.ckpt` (a fixed
`hydra.run.dir`, a re-launched sweep) silently continued that run and rewrote its `.hydra/` with
a config that no longer described its checkpoints. The rules:

- `ckpt_path=null` in a dir that already holds checkpoints or `metrics.json`: refused before Hydra
  writes anything there, naming the dir and the two ways on (`ckpt_path=last`, another dir).
- `ckpt_path=last`: the `checkpoints/last.ckpt` of this run's dir (Lightning's spelling); a dir
  without one starts a new run and says so (the first run of a re-queued cluster job).
- Lightning's own SLURM requeue (its `hpc_ckpt_<n>.ckpt` in the run dir, SLURM_RESTART_COUNT > 0)
  resumes, and says so.
- A resumed run's config must agree with the checkpoint's in what the checkpoint means (model,
  loss, data, optimiser and module); run-length keys (trainer.*) and loader or path keys may change.

`RunDirGuard` applies the rules in Hydra's `on_run_start` / `on_multirun_start`, which come before
Hydra creates the run dir, writes `.hydra/` or opens the log file; `train()` checks the config of
the checkpoint it resumes again (multirun jobs, DDP children).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from src.utils.errors import UserError, exit_on_user_error

log = logging.getLogger(__name__)

LAST = "last"
# What in a config decides what a checkpoint means; trainer.* (run length), seed, paths may change.
MEANING_KEYS = ("model", "loss", "data", "optim", "module")
# ...except these, which say where things are or how they are loaded, not what is learned.
FREE_KEYS = (
    "data.root",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "model.init_from",
    "model.backbone.weights",
    "module.compile",
    "module.channels_last",
    # interpolated copies of optim.* and data.* (each difference is reported once, at its source)
    "module.optimizer",
    "module.num_classes",
    "module.ignore_index",
    "module.class_names",
)
_HPC_CHECKPOINT = re.compile(r"hpc_ckpt_(\d+)\.ckpt")


class ResumeMismatchError(UserError):
    """A resumed checkpoint was written by a run whose config differs in what it means."""


def earlier_run_files(output_dir: Path) -> list[Path]:
    """Files in `output_dir` that only a training run writes: its checkpoints and metrics.json."""
    found = sorted((output_dir / "checkpoints").glob("*.ckpt"))
    found += sorted(output_dir.glob("hpc_ckpt_*.ckpt"))
    if (output_dir / "metrics.json").is_file():
        found.append(output_dir / "metrics.json")
    return found


def hpc_requeue_checkpoint(output_dir: Path) -> Path | None:
    """Lightning's SLURM requeue checkpoint of a re-queued job (SLURM_RESTART_COUNT > 0), if any."""
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) <= 0:
        return None
    versions = []
    for path in output_dir.glob("hpc_ckpt_*.ckpt"):
        match = _HPC_CHECKPOINT.fullmatch(path.name)
        if match:
            versions.append((int(match.group(1)), path))
    return max(versions)[1] if versions else None


def resume_checkpoint(ckpt_path: str | None, output_dir: Path) -> Path | None:
    """The checkpoint a run resumes from: a file, `last` of this dir (None if it has none yet), or None."""
    if ckpt_path is None:
        return hpc_requeue_checkpoint(output_dir)
    if str(ckpt_path) == LAST:
        last = output_dir / "checkpoints" / "last.ckpt"
        return last if last.is_file() else None
    return Path(ckpt_path).expanduser()


def check_output_dir(ckpt_path: str | None, output_dir: Path) -> None:
    """Refuse to start a new run in a dir that holds another run's files (see the module docstring)."""
    files = earlier_run_files(output_dir)
    if not files or str(ckpt_path) == LAST or hpc_requeue_checkpoint(output_dir):
        return
    if ckpt_path is not None and _inside(Path(ckpt_path), output_dir):
        return  # ckpt_path names this very run's checkpoint: an explicit resume of it
    shown = ", ".join(str(f.relative_to(output_dir)) for f in files[:3])
    shown += " ..." if len(files) > 3 else ""
    raise UserError(
        f"{output_dir} already holds another run ({shown}); nothing was changed there. To continue "
        f"that run add ckpt_path=last; to start a new one choose another hydra.run.dir "
        "(or leave it out: every run gets its own timestamped dir)"
    )


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.expanduser().resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(tree, Mapping) and tree:
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, tree


def meaning(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened keys of a resolved config that decide what a checkpoint means."""
    sections = {key: config.get(key) for key in MEANING_KEYS}
    free = tuple(k + "." for k in FREE_KEYS)
    return {k: v for k, v in _flatten(sections) if k not in FREE_KEYS and not k.startswith(free)}


def _absent_prefix(key: str, side: Mapping[str, Any]) -> str | None:
    """The shortest dotted prefix of `key` of which `side` has no key at all (a whole section missing)."""
    parts = key.split(".")
    for end in range(1, len(parts) + 1):
        prefix = ".".join(parts[:end])
        if not any(k == prefix or k.startswith(prefix + ".") for k in side):
            return prefix
    return None


def config_differences(current: Mapping[str, Any], stored: Mapping[str, Any]) -> list[str]:
    """One line per difference in the meaning keys: `key: stored -> current`, or a section only one side has."""
    ours, theirs = meaning(current), meaning(stored)
    lines: list[str] = []
    for key in sorted(set(ours) | set(theirs)):
        if key in ours and key in theirs:
            if ours[key] != theirs[key]:
                lines.append(f"{key}: {theirs[key]!r} -> {ours[key]!r}")
            continue
        where = ("only in the checkpoint", ours) if key in theirs else ("only in this run", theirs)
        line = f"{_absent_prefix(key, where[1])} ({where[0]})"
        if line not in lines:
            lines.append(line)
    return lines


def check_resume_config(
    current: Mapping[str, Any], checkpoint: Path, loaded: Mapping[str, Any] | None = None
) -> None:
    """Raise ResumeMismatchError naming the keys in which this run's config and the checkpoint's differ.

    `loaded`: the checkpoint already read by the caller (a large file is then not read again).
    """
    from src.utils.checkpoint import checkpoint_config, load_checkpoint

    stored = checkpoint_config(dict(loaded) if loaded is not None else load_checkpoint(checkpoint), checkpoint)
    differences = config_differences(current, stored)
    if not differences:
        return
    shown = "; ".join(differences[:8])
    shown += f"; and {len(differences) - 8} more" if len(differences) > 8 else ""
    raise ResumeMismatchError(
        f"cannot resume {checkpoint}: this run's config differs from the one that wrote it in what "
        f"the checkpoint means ({shown}). Resume with the checkpoint's values, or start a new run in "
        "another dir (model.init_from=<file> starts from its weights)"
    )


def _app_config(config: DictConfig) -> dict[str, Any]:
    """The meaning sections of a composed config, resolved (they need no Hydra runtime values)."""
    return {key: OmegaConf.to_container(config[key], resolve=True) for key in MEANING_KEYS if key in config}


def _is_secondary_process() -> bool:
    """A DDP child or non-zero rank: the job's first process already checked (and may have written)."""
    ranks = (os.environ.get(name, "0") for name in ("LOCAL_RANK", "RANK", "SLURM_PROCID"))
    return any(rank not in ("", "0") for rank in ranks)


class RunDirGuard(HydraCallback):
    """Hydra callback applying the rules above before Hydra touches the run dir (conf/train.yaml)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """RUN mode: check the run dir and, when resuming, the checkpoint's config."""
        if _is_secondary_process():
            return
        output_dir = Path(str(config.hydra.run.dir)).expanduser().absolute()
        ckpt_path = config.get("ckpt_path")
        # one line and exit 1: Hydra's own report would add a traceback (and a sweep go on into the dir)
        with exit_on_user_error():
            self._check(ckpt_path, output_dir, config)

    @staticmethod
    def _check(ckpt_path: str | None, output_dir: Path, config: DictConfig) -> None:
        check_output_dir(ckpt_path, output_dir)
        checkpoint = resume_checkpoint(ckpt_path, output_dir)
        if checkpoint is not None and checkpoint.is_file():
            check_resume_config(_app_config(config), checkpoint)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """MULTIRUN: a sweep dir holding earlier jobs' runs is refused unless ckpt_path=last."""
        sweep_dir = Path(str(config.hydra.sweep.dir)).expanduser().absolute()
        ckpt_path = config.get("ckpt_path")
        jobs = [p for p in sorted(sweep_dir.glob("*")) if p.is_dir() and earlier_run_files(p)]
        if jobs and str(ckpt_path) != LAST:
            with exit_on_user_error():
                check_output_dir(None, jobs[0])
