"""Jobs started from a process that has already imported torch, Lightning and Hydra.

`python src/train.py` spends about 6 s importing before it reads an argument (Lightning imports
all of torchmetrics, which imports torchvision's models and scipy). A sweep of short CPU jobs
(the smoke grid, small models) would spend most of its time there, and two slots on two cores
would finish later than `-m`, which imports once. So CPU jobs are forked from a multiprocessing
forkserver that preloaded those libraries: each job is still its own process, with its own argv,
working directory, environment, session, output file and exit code, running the script as
`__main__` as the interpreter would, and it ends as the interpreter ends (threads joined, atexit
handlers run).

A forked job's parent is the server, which outlives the runner (it stays while any job it forked
lives), so the kernel's parent-death signal cannot tell a job that its runner died; a thread in the
job waits on the runner's pidfd instead and sends the job SIGTERM, as the parent-death signal does
for jobs started as fresh interpreters.

A forked job differs from a fresh interpreter only in what was read at import time. Thread
counts are set again in the job (`torch.set_num_threads` from OMP_NUM_THREADS), and jobs with
GPUs are never forked: CUDA's device list is fixed when first read, so they start fresh
interpreters (their runs are long, the saving small).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import multiprocessing
import os
import runpy
import select
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

# What every seglab entry point imports before it does anything: imported once, in the server.
PRELOADED = ("torch", "torchvision", "lightning", "hydra", "src.utils.build")
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def forkserver(preload: Sequence[str] = PRELOADED) -> multiprocessing.context.BaseContext:
    """A forkserver context that imports `preload` once, in its server, before forking jobs."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    return context


def end_with_parent() -> None:
    """SIGTERM this process when its parent dies, even by SIGKILL (Linux only; elsewhere nothing).

    A job then writes its checkpoint and stops instead of running on, orphaned, after its runner
    was killed; the next runner resumes it.
    """
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def end_with(pid: int) -> None:
    """SIGTERM this process when process `pid` ends (Linux's pidfd; elsewhere nothing)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:  # it has ended already
        os.kill(os.getpid(), signal.SIGTERM)
        return
    except (OSError, AttributeError):
        return

    def watch() -> None:
        select.select([pidfd], [], [])  # readable once the process has ended
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="end-with-runner", daemon=True).start()


def run_as_main(
    argv: Sequence[str],
    cwd: str,
    env: Mapping[str, str],
    stdout: str,
    stderr: str | None = None,
    runner: int | None = None,
) -> None:
    """In a forked process: become `python argv[0] argv[1:]` and run the script as `__main__`.

    stdout and stderr go to those files (stderr to stdout's when None, appended then). Given the
    `runner`'s pid, the process leads its own session and process group and gets SIGTERM when the
    runner ends.
    """
    if runner is not None:
        os.setsid()
        end_with(runner)
    _redirect(1, stdout, append=stderr is None)
    if stderr is None:
        os.dup2(1, 2)
    else:
        _redirect(2, stderr, append=False)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    _apply_thread_count(env)
    sys.argv = list(argv)
    # The interpreter puts the script's folder first on sys.path, then PYTHONPATH's entries.
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:1] = [str(Path(argv[0]).resolve().parent), *extra]
    try:
        runpy.run_path(argv[0], run_name="__main__")
    finally:
        shut_down_like_the_interpreter()


def _apply_thread_count(env: Mapping[str, str]) -> None:
    """torch read OMP_NUM_THREADS when the server imported it: give the job its own count."""
    threads = env.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0 and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))


def _redirect(fd: int, path: str, append: bool) -> None:
    """Point file descriptor `fd` at a file (the job's stdout or stderr)."""
    mode = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    target = os.open(path, mode, 0o644)
    os.dup2(target, fd)
    os.close(target)


def shut_down_like_the_interpreter() -> None:
    """What Python does at exit and multiprocessing's os._exit skips: join threads, run atexit, flush."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()


def writes_to(pid: int, path: Path) -> bool:
    """Whether process `pid`'s stdout is `path` (how a forked job, whose command line is its
    server's, is told apart from a reused pid)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/fd/1")) == path.resolve()
    except OSError:
        return False
