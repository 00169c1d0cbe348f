"""Train a segmentation model: compose the config, build the run's parts, fit.

python src/train.py [group=option ...] [key=value ...]    (see conf/train.yaml)
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

# `python src/train.py` puts src/ on sys.path, not the repository root that holds the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from src.sweeps.trial import refuse_search_outside_runner  # noqa: E402
from src.utils.errors import UserError, exit_on_user_error  # noqa: E402
from src.utils.metric_config import check_metric_names  # noqa: E402
from src.utils.resolvers import check_required  # noqa: E402
from src.utils.run_guard import LAST, check_resume_config, resume_checkpoint  # noqa: E402

# torch and Lightning (~6 s to import) load in train(): a mistyped key, a missing value or a
# refused run dir is reported before that.

log = logging.getLogger(__name__)


def log_lightning_through_hydra() -> None:
    """Lightning's messages go to Hydra's handlers (console and train.log) once, not twice.

    `import lightning` gives the "lightning" logger a console handler of its own, and its
    subpackages propagate to the root logger when it has handlers (Hydra's, configured before
    train() imports Lightning): every message would be printed twice.
    """
    lightning_logger = logging.getLogger("lightning")
    if logging.getLogger().hasHandlers():
        for handler in list(lightning_logger.handlers):
            lightning_logger.removeHandler(handler)


def checkpoint_to_resume(cfg: DictConfig) -> tuple[str | None, int]:
    """The checkpoint this run continues (None: a new run) and its global step; its config is checked.

    A missing or unsafe file fails here, before anything is built, and its payload never runs.
    """
    from src.utils.build import plain_config
    from src.utils.checkpoint import load_checkpoint

    requested = cfg.get("ckpt_path")
    checkpoint = resume_checkpoint(requested, Path(cfg.paths.output_dir))
    if checkpoint is None:
        if str(requested) == LAST:
            log.info("ckpt_path=last: %s holds no checkpoints/last.ckpt yet; starting a new run", cfg.paths.output_dir)
        return None, 0
    loaded = load_checkpoint(checkpoint)
    step = int(loaded.get("global_step", 0))
    check_resume_config(plain_config(cfg), checkpoint, loaded)
    how = "Lightning's SLURM requeue checkpoint" if requested is None else f"ckpt_path={requested}"
    log.info("resuming from %s (%s), global step %d", checkpoint, how, step)
    return str(checkpoint), step


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured model; return the final logged metrics."""
    check_required(cfg)  # an experiment's mandatory value (model.init_from ...) is named first
    import lightning as L

    from src.utils.build import build_run
    from src.utils.config_tree import TREE_FILE, print_config_tree
    from src.utils.next_steps import next_steps

    log_lightning_through_hydra()

    checkpoint, start_step = checkpoint_to_resume(cfg)
    L.seed_everything(cfg.seed, workers=True)
    print_config_tree(cfg, save_to=Path(cfg.paths.output_dir) / TREE_FILE)
    run = build_run(cfg)
    run.datamodule.check_train_batches(run.trainer)  # an epoch without a batch fails before fit
    run.trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=checkpoint, weights_only=True)
    if run.trainer.global_step == start_step:
        # nothing trained: the metrics Lightning holds are not this run's result (no NaN to a sweeper)
        raise UserError(nothing_trained(run.trainer, checkpoint, start_step))
    metrics = {k: float(v) for k, v in run.trainer.callback_metrics.items() if v.numel() == 1}
    if run.trainer.is_global_zero:
        log.info(next_steps(run.trainer, run.datamodule, metrics, Path(cfg.paths.output_dir)))
    return metrics


def nothing_trained(trainer: Any, checkpoint: str | None, start_step: int) -> str:
    """The error of a fit that made no optimiser step: where it stopped and what to raise."""
    if checkpoint is not None:
        return (
            f"{checkpoint} is already at global step {start_step} (epoch {trainer.current_epoch}), "
            "where this run's trainer.max_epochs / trainer.max_steps end: nothing was trained. Raise "
            "trainer.max_epochs (or max_steps) to continue it"
        )
    return (
        f"the fit ended after 0 optimiser steps (trainer.max_epochs={trainer.max_epochs}, "
        f"trainer.max_steps={trainer.max_steps}, {trainer.num_training_batches} training batch(es) "
        "per epoch): nothing was trained, so no metric is reported and no metrics.json written. "
        "Give trainer.max_epochs and trainer.max_steps values that allow a step"
    )


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns `optimized_metric` for sweepers."""
    # In a sweep, one job's mistake fails that job (Hydra reports it and the sweep goes on);
    # otherwise it is one clear line, no traceback.
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    with exit_on_user_error(reraise=in_sweep):
        check_required(cfg)  # before src.utils.ddp imports Lightning (~6 s)
        refuse_search_outside_runner(cfg)
    from src.utils import ddp

    ddp.install(__file__)  # DDP children join this job as a single run (see src/utils/ddp.py)
    with exit_on_user_error(reraise=in_sweep), ddp.job_scope():
        metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    with exit_on_user_error():  # Hydra would not name the choices of a misspelt metrics=[...]
        check_metric_names(sys.argv[1:])
    main()
