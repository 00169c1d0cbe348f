"""Runs that survive interruption: RNG states in checkpoints, `last.ckpt` on SIGTERM/Ctrl-C, fault injection.

Lightning already restores the model, optimiser, LR schedulers, AMP scaler and loop progress from
`trainer.fit(ckpt_path=...)`, and already turns SIGTERM into a clean stop after the current batch
(its signal connector sets `trainer.received_sigterm`; the loops then raise `SIGTERMException`).
What it leaves out, and this file adds:

- the global RNG states (torch, CUDA, numpy, Python) are not in its checkpoints, so a resumed run
  would shuffle, augment and drop out differently from the run it continues (`RNGStateCheckpoint`);
- nothing is written when it stops on SIGTERM, and Ctrl-C interrupts mid-step (`InterruptCheckpoint`);
- Optuna's SQLite storage needs its directory before the sweeper opens it (`PrepareSweepStorage`).
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.experimental.callback import Callback as HydraCallback
from lightning.pytorch.callbacks import OnExceptionCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def collect_rng_states() -> dict[str, Any]:
    """The global RNG states as tensors and plain numbers, so checkpoints load with weights_only=True."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # numpy's MT19937 key is a uint32 array: stored as int64 so no numpy object is pickled
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": int(version), "state": list(python_state), "gauss": gauss},
    }
    # Only the current device: under DDP each rank drives one GPU (and CUDA is not initialised
    # just to read a state on a CPU run).
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the global RNG states saved by `collect_rng_states`."""
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"].cpu())
    np_state = states["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py_state = states["python"]
    random.setstate((py_state["version"], tuple(py_state["state"]), py_state["gauss"]))


class RNGStateCheckpoint(L.Callback):
    """Saves the global RNG states in every checkpoint and restores them on resume.

    With them, a run resumed from an end-of-epoch `last.ckpt` draws the same shuffles, crops and
    dropout masks as the uninterrupted run (with `trainer.deterministic=true`: the same metrics).
    Under DDP rank 0's states are saved and restored on every rank; `seed_everything` gives all
    ranks the same seed, so their main-process streams are the same anyway.
    """

    def state_dict(self) -> dict[str, Any]:
        """The RNG states at the moment the checkpoint is written."""
        return collect_rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the RNG states (Lightning calls this before the first batch is fetched)."""
        restore_rng_states(state_dict)


class InterruptCheckpoint(OnExceptionCheckpoint):
    """Writes `<dirpath>/last.ckpt` when the run is stopped by SIGTERM or Ctrl-C, then exits 143 / 130.

    Lightning stops on SIGTERM by itself; its `OnExceptionCheckpoint` would write the file, but it
    falls short in four ways, fixed here:
    - it saves on *any* exception, so a crash or a non-finite loss would overwrite the last good
      checkpoint with a broken state: here only SIGTERM and Ctrl-C save;
    - it deletes its file in `teardown`, which would remove ModelCheckpoint's `last.ckpt`;
    - a SIGTERM during (or just before) validation makes Lightning abandon the validation after one
      batch, and a resume from that state skips the epoch's validation altogether. Here the signal
      is held until the validation has ended, and passed on to Lightning at a step boundary
      otherwise, so every saved state resumes exactly (`tests/test_resume.py`);
    - Ctrl-C raises KeyboardInterrupt wherever the main thread is (possibly between the optimiser
      step and the progress counters): here the first Ctrl-C stops like SIGTERM, a second one
      aborts at once without saving.
    The exit status is the shell's for a process killed by that signal, so a scheduler sees a
    pre-empted job, not a finished one (Lightning's `SIGTERMException` would exit 0).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, dirpath: str | Path, filename: str = "last") -> None:
        super().__init__(dirpath=str(dirpath), filename=filename)
        self._previous: dict[int, Any] = {}
        self._pending: int | None = None
        self._stop_signal = int(signal.SIGTERM)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Take over SIGTERM and SIGINT (Lightning's own SIGTERM handler is installed by now)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._pending = None
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._pending is not None:
            if signum == signal.SIGINT:
                self._restore_handlers()
                raise KeyboardInterrupt
            return
        self._pending = signum
        log.warning(
            "%s: stopping at the next step boundary and writing %s%s",
            signal.Signals(signum).name,
            self.ckpt_path,
            " (Ctrl-C again aborts without saving)" if signum == signal.SIGINT else "",
        )

    def _pass_on(self) -> None:
        """Hand a held signal to Lightning as SIGTERM: it stops after the current batch."""
        if self._pending is None:
            return
        self._stop_signal = self._pending
        lightning_handler = self._previous.get(signal.SIGTERM)
        self._restore_handlers()
        if callable(lightning_handler):
            lightning_handler(signal.SIGTERM, None)

    def _restore_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                if handler is not None:  # None: installed from C, cannot be put back from Python
                    signal.signal(signum, handler)
        self._previous = {}

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Pass a held signal on, unless this epoch's validation comes next (then wait for its end)."""
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._pass_on()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The validation is complete (and checkpointed): a held signal may stop the run now."""
        if not trainer.sanity_checking:
            self._pass_on()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Epochs without validation: stop at the epoch's end."""
        self._pass_on()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Save on SIGTERM/Ctrl-C only; any other error keeps the last good checkpoint untouched."""
        self._restore_handlers()
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.ckpt_path)
            exception.code = 128 + self._stop_signal
            if trainer.is_global_zero:
                log.warning(
                    "stopped by %s at global step %d; saved %s (resume with ckpt_path=%s)",
                    signal.Signals(self._stop_signal).name,
                    trainer.global_step,
                    self.ckpt_path,
                    self.ckpt_path,
                )
        elif isinstance(exception, KeyboardInterrupt) and trainer.is_global_zero:
            log.warning("aborted by a second Ctrl-C: nothing saved (the state may be mid-step)")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Give the signals back once training is over."""
        self._restore_handlers()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Keep the file (the parent class deletes it; here it is the run's `last.ckpt`)."""
        self._restore_handlers()


class FaultInjection(L.Callback):
    """Test hook: a fault once `trainer.global_step` reaches `at_step`, to check the guards above.

    `kind=nan_loss` fills the input of the batch trained at that step with NaN (the loss becomes
    non-finite there); `kind=sigterm` sends this process SIGTERM right after that step, as a
    scheduler pre-empting the job would. Add it from the command line:
    `+callbacks.fault._target_=src.reliability.FaultInjection +callbacks.fault.kind=nan_loss +callbacks.fault.at_step=4`.
    """

    KINDS = ("nan_loss", "sigterm")

    def __init__(self, kind: str, at_step: int) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"FaultInjection kind={kind!r}; expected one of {self.KINDS}")
        self.kind = kind
        self.at_step = int(at_step)
        self.fired = False

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """`nan_loss`: poison this batch's images if it is trained at `at_step`."""
        if self.kind == "nan_loss" and not self.fired and trainer.global_step == self.at_step:
            self.fired = True
            batch["image"].fill_(math.nan)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """`sigterm`: signal this process once `at_step` steps are done."""
        if self.kind == "sigterm" and not self.fired and trainer.global_step == self.at_step:
            self.fired = True
            os.kill(os.getpid(), signal.SIGTERM)


def sqlite_path(storage: str | None) -> Path | None:
    """The database file of an `sqlite:///<path>` storage URL; None for other storages."""
    prefix = "sqlite:///"
    if not storage or not storage.startswith(prefix):
        return None
    path = storage[len(prefix) :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


class PrepareSweepStorage(HydraCallback):
    """Hydra callback: creates the SQLite study's directory before the Optuna sweeper opens it.

    The sweeper calls `optuna.create_study(storage=..., load_if_exists=True)` before any job has
    made the sweep dir, and SQLite does not create directories. An existing database means the
    search resumes: its finished trials stay in the study and new trials are numbered after them.
    """

    def __init__(self, storage: str | None) -> None:
        self.storage = storage

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Create the database's directory; say whether the study is new or resumed."""
        path = sqlite_path(self.storage)
        if path is None:
            return
        if path.exists():
            log.info("resuming the study stored in %s", path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            log.info("storing the study in %s", path)
