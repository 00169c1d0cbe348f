"""Lightning callback: SIGTERM or Ctrl-C writes `last.ckpt` at a step boundary and exits 143 / 130."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class InterruptCheckpoint(L.Callback):
    """Writes `<dirpath>/last.ckpt` when the run is stopped by SIGTERM or Ctrl-C, then exits 143 / 130.

    Lightning stops on SIGTERM by itself; its `OnExceptionCheckpoint` would write the file, but it
    falls short in five ways, fixed here:
    - with it, `trainer.fit(ckpt_path=None)` means "resume from last": a run whose output dir
      holds another run's `last.ckpt` silently continues that run (Lightning's
      `_parse_ckpt_path`). This is a plain callback, so a run resumes only when asked;
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
        self.ckpt_path = str(Path(dirpath) / f"{filename}.ckpt")
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
        """Give the signals back whatever ended the fit."""
        self._restore_handlers()
