"""The slot loop: a free slot starts the driver's next job at once; a stop signal stops every job.

A driver (a grid, or an Optuna study) says which job comes next and is told how each ended; a
backend starts and stops them. The loop polls every `poll_s`, so a slot that frees starts its next
job within that time (no batches: a slow job never holds the others back).

SIGTERM, SIGINT or SIGHUP to the runner sends SIGTERM to every running job, waits for them to write
their checkpoints and end, records them as interrupted (the next run of the same command continues
them) and exits 128 + the signal's number, as a process killed by it would.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from src.sweeps.backends import Backend, Job
from src.sweeps.journal import JobJournal, quote, run_dir_override
from src.sweeps.resources import SlotResources
from src.utils.files import write_json_atomic

log = logging.getLogger(__name__)

JOB_RECORD = "sweep_job.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@dataclass
class PlannedJob:
    """A job a driver wants run: its number, its dir's name and its task overrides."""

    number: int
    name: str  # the run dir, relative to the sweep dir
    overrides: list[str]  # what the job's config differs in (the swept values included)
    resume: bool = False  # continue from the run dir's last.ckpt when there is one
    env: dict[str, str] = field(default_factory=dict)


class Driver(Protocol):
    """Decides what runs: a grid, or an Optuna study."""

    def next_job(self) -> PlannedJob | None:
        """The next job to start now; None when there is none (for now)."""

    def finished(self, job: PlannedJob, exit_code: int, stopped: bool) -> str:
        """Record how a job ended (`stopped`: the runner stopped it); return its state."""


@dataclass
class _Running:
    planned: PlannedJob
    handle: Any
    started: float


class Scheduler:
    """Runs a driver's jobs in slots on a backend, recording each start and end in the journal."""

    def __init__(
        self,
        driver: Driver,
        backend: Backend,
        sweep_dir: Path,
        slots: Sequence[SlotResources],
        journal: JobJournal,
        assign_devices: bool = True,
        poll_s: float = 0.1,
    ) -> None:
        self.driver = driver
        self.backend = backend
        self.sweep_dir = sweep_dir
        self.slots = list(slots)
        self.journal = journal
        self.assign_devices = assign_devices
        self.poll_s = poll_s
        self._stop_signal: int | None = None

    def run(self) -> int | None:
        """Run until the driver has no more jobs; return None, or 128 + N when signal N stopped the sweep."""
        previous = {signum: signal.signal(signum, self._on_signal) for signum in STOP_SIGNALS}
        running: dict[int, _Running] = {}
        try:
            while True:
                if self._stop_signal is not None:
                    self._stop(running)
                    return 128 + self._stop_signal
                started = self._fill(running)
                if not running and not started:
                    return None
                time.sleep(self.poll_s)
                self._reap(running)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is None:
            log.warning("%s: stopping every job (each writes its checkpoint)", signal.Signals(signum).name)
            self._stop_signal = signum

    def _fill(self, running: dict[int, _Running]) -> bool:
        """Start the driver's next jobs in the free slots; say whether any started."""
        started = False
        for resources in self.slots:
            if resources.slot in running or self._stop_signal is not None:
                continue
            planned = self.driver.next_job()
            if planned is None:
                break
            running[resources.slot] = self._start(planned, resources)
            started = True
        return started

    def _reap(self, running: dict[int, _Running]) -> None:
        """Hand every job that ended to the driver."""
        for slot, entry in list(running.items()):
            code = self.backend.poll(entry.handle)
            if code is not None:
                del running[slot]
                self._finish(entry, code, stopped=False)

    def _start(self, planned: PlannedJob, resources: SlotResources) -> _Running:
        run_dir = self.sweep_dir / planned.name
        overrides = list(planned.overrides)
        last = run_dir / LAST_CHECKPOINT
        resumed_from = str(last) if planned.resume and last.is_file() else None
        if resumed_from is not None:
            overrides.append(f"ckpt_path={quote(resumed_from)}")
        env = {**(resources.env() if self.assign_devices else {}), **planned.env}
        job = Job(
            number=planned.number,
            overrides=[*overrides, run_dir_override(run_dir), f"hydra.job.num={planned.number}"],
            run_dir=run_dir,
            env=env,
            slot=resources.slot,
        )
        where = resources.describe() if self.assign_devices else {"slot": resources.slot}
        run_dir.mkdir(parents=True, exist_ok=True)
        record = {"number": planned.number, "overrides": planned.overrides, "host": socket.gethostname()}
        record.update(where, resumed_from=resumed_from)
        write_json_atomic(run_dir / JOB_RECORD, record)
        handle = self.backend.submit(job)
        pid = getattr(handle, "pid", None)
        self.journal.record(
            "start", planned.name, number=planned.number, overrides=planned.overrides,
            resources=where, pid=pid, host=socket.gethostname(), resumed_from=resumed_from,
        )  # fmt: skip
        log.info("job %s started in slot %d: %s", planned.name, resources.slot, " ".join(planned.overrides))
        return _Running(planned, handle, time.monotonic())

    def _finish(self, entry: _Running, code: int, stopped: bool) -> None:
        state = self.driver.finished(entry.planned, code, stopped)
        self.journal.record(
            "end", entry.planned.name, number=entry.planned.number, state=state, exit_code=code,
            stopped_by_runner=stopped,
        )  # fmt: skip
        log.info(
            "job %s %s (exit code %d) after %.1f s",
            entry.planned.name, state, code, time.monotonic() - entry.started,
        )  # fmt: skip

    def _stop(self, running: dict[int, _Running]) -> None:
        """SIGTERM every running job at once and wait for all of them; record them as interrupted."""
        entries = list(running.values())
        if entries:
            with ThreadPoolExecutor(len(entries)) as pool:
                list(pool.map(lambda entry: self.backend.cancel(entry.handle), entries))
        for entry in entries:
            code = self.backend.poll(entry.handle)
            self._finish(entry, code if code is not None else 128 + signal.SIGTERM, stopped=code != 0)
        running.clear()
