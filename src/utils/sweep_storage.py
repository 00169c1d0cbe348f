"""Hydra callback for Optuna searches: the SQLite study's directory exists before the sweeper opens it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def sqlite_path(storage: str | None) -> Path | None:
    """The database file of an `sqlite:///<path>` storage URL; None for other storages."""
    prefix = "sqlite:///"
    if not storage or not storage.startswith(prefix):
        return None
    path = storage[len(prefix) :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


class PrepareSweepStorage(HydraCallback):
    """Creates the SQLite study's directory before the Optuna sweeper opens it.

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
