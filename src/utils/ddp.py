"""Lightning DDP inside Hydra runs and multiruns: one run per job, whatever the number of processes.

Lightning's `_SubprocessScriptLauncher` (DDP with `strategy=ddp`, what `trainer.devices=N` picks)
starts N-1 copies of the script. When Hydra is initialised it builds their command with
`_hydra_subprocess_cmd`, which re-runs `sys.argv`: under `-m` every child starts a sweep of its
own, and the children of job k write wherever `hydra.run.dir` points, not into job k's dir
(Lightning #11300, Hydra #2070, lightning-hydra-template #393; all still open). seglab replaces
that helper with `child_command`: the child runs this job's own overrides (unresolved, as Hydra
recorded them) as a single run (`hydra.mode=RUN`, no `-m`) in this job's output dir
(`hydra.run.dir=...`), with `hydra.job.num` passed so it knows which job it belongs to, and
`hydra.output_subdir=null` because the parent already wrote `.hydra/`.

Both `lightning.fabric` and `lightning.pytorch` import the helper by name, so `install` replaces it
in both modules. It also replaces `_launch_process_observer`: Lightning's watcher thread SIGKILLs
the main process when a child fails, which kills the whole sweep, and it outlives its job.

All jobs of Hydra's basic launcher run in one process, so `job_scope` puts back, after each job
(success or failure), what the job changed: the process group is destroyed (Lightning would
otherwise reuse it: `_init_dist_connection` returns early when one exists), the children of a
failed job are killed (otherwise they block in a gloo collective until its 30 min timeout), the
watcher is stopped, and the environment (`LOCAL_RANK`, `NODE_RANK`, `MASTER_ADDR`, `MASTER_PORT`,
`WORLD_SIZE`, `OMP_NUM_THREADS`, ...), torch's thread count and the rank of `rank_zero_only` are
restored. A leftover `LOCAL_RANK` makes Lightning believe the next job's processes are started
externally, so it would train alone while believing it has N processes.

This relies on Lightning 2.6 and Hydra 1.3 internals (pinned in pyproject.toml); `install` fails
loudly and tests/test_ddp.py fails if the patched helpers move or change signature.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.types import Quote, QuotedString
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning_utilities.core.rank_zero import rank_zero_only as utils_rank_zero_only
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

# Every module that binds the helpers by name (verified in lightning 2.6's source).
LAUNCHER_MODULES = (
    "lightning.fabric.strategies.launchers.subprocess_script",
    "lightning.pytorch.strategies.launchers.subprocess_script",
)
# The helpers replaced there (tests/test_ddp.py pins their signatures).
PATCHED_HELPERS = ("_hydra_subprocess_cmd", "_launch_process_observer")
# Hydra overrides the child must not inherit: it is a single run in the job's dir, not a sweep.
_SWEEP_ONLY = (
    "hydra.mode",
    "hydra.run",
    "hydra.output_subdir",
    "hydra.job.num",
    "hydra.job.id",
    "hydra.sweep",
    "hydra.sweeper",
    "hydra/sweeper",
    "hydra.launcher",
    "hydra/launcher",
)
# Command-line flags that choose the config; they are not overrides, so HydraConfig lacks them.
_CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")
# How long a job waits for its children to exit on their own before killing them: a finished job's
# children are only tearing down; a failed job's get a moment to report their own error.
CHILD_GRACE_S = 60.0
FAILED_GRACE_S = 10.0

_watchers: list[ChildWatcher] = []
_script: str | None = None  # the entry point the children run; set by `install`


def _quote(value: str) -> str:
    """Quote a value for Hydra's override grammar (paths may hold spaces, '=', ',' or brackets)."""
    return QuotedString(text=value, quote=Quote.single).with_quotes()


def _config_flags(argv: Sequence[str]) -> list[str]:
    """The config-choosing flags of a Hydra command line (`-cn x`, `--config-dir=y`, ...)."""
    kept: list[str] = []
    args = iter(argv)
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in _CONFIG_FLAGS:
            kept.append(arg)
            if "=" not in arg:
                kept.append(next(args, ""))
    return kept


def _sweep_only(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return any(key == name or key.startswith(name + ".") for name in _SWEEP_ONLY)


def child_command(local_rank: int) -> tuple[list[str], str]:
    """Command and cwd of DDP child `local_rank`: this job's overrides, run once in this job's dir."""
    hydra_cfg = HydraConfig.get()
    # Unresolved: reading the ListConfig item by item would resolve `${...}` in the parent's context.
    task = OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)
    hydra_overrides = OmegaConf.to_container(hydra_cfg.overrides.hydra, resolve=False)
    inherited = [o for o in hydra_overrides if not _sweep_only(o)]
    job_num = OmegaConf.select(hydra_cfg, "job.num", default=0)
    if _script is None:
        raise RuntimeError(
            "seglab's DDP child command is used before src.utils.ddp.install(script)"
        )
    command = [
        sys.executable,
        _script,
        *_config_flags(sys.argv[1:]),
        *task,
        *inherited,
        f"hydra.run.dir={_quote(hydra_cfg.runtime.output_dir)}",
        "hydra.output_subdir=null",
        "hydra.mode=RUN",
        f"hydra.job.num={job_num}",
    ]
    log.info("DDP child %d: %s", local_rank, " ".join(command[1:]))
    return command, hydra_cfg.runtime.cwd


class ChildWatcher(threading.Thread):
    """Watches one job's DDP children; when one fails, kills the others (not the sweep process)."""

    def __init__(self, children: list[subprocess.Popen], period_s: float = 1.0) -> None:
        super().__init__(daemon=True, name="seglab-ddp-child-watcher")
        self.children = children
        self.period_s = period_s
        self.failed: subprocess.Popen | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        """Poll until every child exited cleanly, one failed, or `stop` was called."""
        while not self._stop_event.wait(self.period_s):
            codes = [child.poll() for child in self.children]
            if all(code == 0 for code in codes):
                return
            failed = next((c for c, code in zip(self.children, codes, strict=True) if code), None)
            if failed is not None:
                self.failed = failed
                log.error(
                    "DDP child %d exited with code %d: stopping this job's other processes",
                    failed.pid,
                    failed.returncode,
                )
                # The main process may be blocked in a collective with the dead child. Under gloo,
                # killing the children closes their connections and the collective raises; NCCL
                # needs the group aborted. Either way the job fails and the sweep goes on.
                kill_children(self.children)
                _abort_process_group()
                return

    def stop(self) -> None:
        """Stop watching and wait for the thread to end."""
        self._stop_event.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join()


def watch_children(child_processes: list[subprocess.Popen]) -> None:
    """Replacement of Lightning's `_launch_process_observer`: a watcher that dies with its job."""
    watcher = ChildWatcher(child_processes)
    _watchers.append(watcher)
    watcher.start()


def kill_children(children: Sequence[subprocess.Popen], grace_s: float = 0.0) -> None:
    """Wait up to `grace_s` for each child to exit, then SIGKILL it (SIGTERM does not stop a collective)."""
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=grace_s)
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            child.wait()


def _abort_process_group() -> None:
    """Make the main thread's pending NCCL collectives fail instead of waiting for their timeout."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    abort = getattr(torch.distributed.distributed_c10d, "_abort_process_group", None)
    if abort is None:
        return
    try:
        abort()
    except Exception as err:  # the collective's own error or timeout ends it instead
        log.warning("could not abort the process group after a child failed: %s", err)


def install(script: str | os.PathLike[str]) -> None:
    """Make Lightning start DDP children as `python <script> <this job's overrides>` (see module doc).

    The script is named, not read from `__main__`: under a submitit launcher `__main__` is
    submitit's worker, and Lightning's own `python -m <module>` guess would re-run that.
    """
    global _script
    for name in LAUNCHER_MODULES:
        module = importlib.import_module(name)
        for attr in PATCHED_HELPERS:
            if not callable(getattr(module, attr, None)):
                raise RuntimeError(
                    f"{name}.{attr} is gone: seglab's multirun x DDP fix (src/utils/ddp.py) needs the "
                    f"Lightning version pinned in pyproject.toml"
                )
        module._hydra_subprocess_cmd = child_command
        module._launch_process_observer = watch_children
    _script = os.path.abspath(script)


@contextlib.contextmanager
def job_scope() -> Iterator[None]:
    """Run one job; afterwards end its DDP children and watcher and undo its process-wide changes."""
    environ = dict(os.environ)
    threads = torch.get_num_threads()
    ranks = (getattr(rank_zero_only, "rank", 0), getattr(utils_rank_zero_only, "rank", 0))
    first_watcher = len(_watchers)
    failed = True
    try:
        yield
        failed = False
    finally:
        watchers = _watchers[first_watcher:]
        del _watchers[first_watcher:]
        for watcher in watchers:
            watcher.stop()
        # Destroying the group first closes its connections, so children still in a collective with
        # this process fail at once (and print their own error) instead of waiting for the timeout.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for watcher in watchers:
            kill_children(watcher.children, grace_s=FAILED_GRACE_S if failed else CHILD_GRACE_S)
        _restore_environ(environ)
        torch.set_num_threads(threads)
        rank_zero_only.rank, utils_rank_zero_only.rank = ranks


def _restore_environ(saved: dict[str, str]) -> None:
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
