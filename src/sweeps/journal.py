"""The sweep dir's record of its jobs, and the lock that lets one runner at a time work there.

`sweep_journal.jsonl` gets one line when a job starts (its overrides, slot, devices, pid) and one
when it ends (its state and exit code), appended and flushed as they happen, so a runner killed
at any point leaves a journal the next one can read: a job that started and never ended was
running when its runner died. Grids resume from it; the summary reads slots and wall times from it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.types import Quote, QuotedString

from src.sweeps.backends import JOB_OUTPUT
from src.sweeps.warm import writes_to
from src.utils.errors import UserError

JOURNAL_FILE = "sweep_journal.jsonl"
LOCK_FILE = ".sweep.lock"
# Exit codes of a job ended by a signal that stops rather than crashes it (SIGHUP, SIGINT, SIGKILL,
# SIGTERM): the job can continue from its last checkpoint.
INTERRUPTED_CODES = frozenset(128 + s for s in (signal.SIGHUP, signal.SIGINT, signal.SIGKILL, signal.SIGTERM))

COMPLETE, PRUNED, FAILED, INTERRUPTED, RUNNING = "complete", "pruned", "failed", "interrupted", "running"
FINAL_STATES = (COMPLETE, PRUNED, FAILED)


@dataclass
class JobHistory:
    """What the journal says about one job dir: its attempts and how the last one ended."""

    name: str
    overrides: list[str] = field(default_factory=list)
    state: str = RUNNING
    attempts: int = 0
    job_faults: int = 0  # attempts ended by a signal the runner did not send
    pid: int | None = None
    host: str | None = None
    wall_time_s: float = 0.0
    started: float | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    number: int | None = None


class JobJournal:
    """Append-only JSON lines in the sweep dir (see the module docstring)."""

    def __init__(self, sweep_dir: Path) -> None:
        self.path = Path(sweep_dir) / JOURNAL_FILE

    def record(self, event: str, name: str, **fields: Any) -> None:
        """Append one event about job dir `name`, flushed to disk before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"event": event, "job": name, "time": time.time(), **fields})
        with self.path.open("a") as journal:
            journal.write(line + "\n")
            journal.flush()
            os.fsync(journal.fileno())

    def events(self) -> list[dict[str, Any]]:
        """Every event so far (a line cut short by a crash is skipped)."""
        if not self.path.is_file():
            return []
        events = []
        for line in self.path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
        return events

    def histories(self) -> dict[str, JobHistory]:
        """Each job dir's history, in the order the jobs first started."""
        jobs: dict[str, JobHistory] = {}
        for event in self.events():
            job = jobs.setdefault(event["job"], JobHistory(event["job"]))
            if event["event"] == "start":
                job.attempts += 1
                job.state, job.started = RUNNING, event["time"]
                job.overrides = event.get("overrides", job.overrides)
                job.pid, job.host = event.get("pid"), event.get("host")
                job.resources = event.get("resources", {})
                job.number = event.get("number", job.number)
            elif event["event"] == "end":
                job.state = event["state"]
                if job.started is not None:
                    job.wall_time_s += event["time"] - job.started
                    job.started = None
                if event.get("exit_code") in INTERRUPTED_CODES and not event.get("stopped_by_runner"):
                    job.job_faults += 1
        return jobs


def ended_after(run_dir: Path, job: JobHistory) -> bool:
    """The job's run wrote its metrics.json after its last start: it finished though nobody saw it end."""
    metrics = run_dir / "metrics.json"
    return job.started is not None and metrics.is_file() and metrics.stat().st_mtime >= job.started


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """Hold the sweep dir's lock while running; a second runner on the same dir is refused."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / LOCK_FILE
    with path.open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise UserError(
                f"{sweep_dir} is being run by {holder}: wait for it to end (or stop it) before "
                "running this sweep again"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"src/sweep.py, pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        yield


def is_locked(sweep_dir: Path) -> bool:
    """A runner holds the sweep dir now (its jobs that have not ended are really running)."""
    path = Path(sweep_dir) / LOCK_FILE
    if not path.is_file():
        return False
    with path.open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
    return False


def run_dir_override(run_dir: Path) -> str:
    """The override that puts a job's run in `run_dir` (quoted: paths may hold spaces, `=` or `,`)."""
    return f"hydra.run.dir={quote(str(run_dir))}"


def quote(text: str) -> str:
    """`text` as one quoted value of Hydra's override grammar."""
    return QuotedString(text=text, quote=Quote.single).with_quotes()


def _alive_in(pid: int, run_dir: Path) -> bool:
    """Process `pid` runs the job of `run_dir`, not a reused pid: its command line or (a job forked
    from the preloaded server, src/sweeps/warm.py) its output file says so."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return run_dir_override(run_dir) in args or writes_to(pid, run_dir / JOB_OUTPUT)


def wait_for_orphans(sweep_dir: Path, journal: JobJournal, grace_s: float) -> None:
    """Wait for jobs of a runner that died to end (the kernel sent them SIGTERM: they are writing
    their checkpoints), killing their process groups after `grace_s`; then their dirs may be resumed."""
    host = socket.gethostname()
    orphans = [
        (job.pid, sweep_dir / job.name)
        for job in journal.histories().values()
        if job.state == RUNNING and job.pid and job.host == host and _alive_in(job.pid, sweep_dir / job.name)
    ]
    deadline = time.monotonic() + grace_s
    for pid, run_dir in orphans:
        while _alive_in(pid, run_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
