"""Run `python <script> ...` the way a user's shell would, without paying the interpreter's imports each time.

About half of the suite's time was spent starting interpreters: every `python src/train.py` spends
~6 s importing torch, torchvision and Lightning (which imports all of torchmetrics) before it reads
its first argument. `run_script` runs the script in a process forked from a server that has
imported those libraries once (multiprocessing's forkserver with preloaded modules), so a command
that fails on a bad value costs ~1 s instead of ~9. The script still runs as `__main__` in its own
process, with its own argv, working directory, environment, stdout and stderr, exit code and
interpreter exit (non-daemon threads joined, atexit handlers run), as `subprocess.run` gives it.

The forked process is not a fresh interpreter in two ways, so some tests keep `subprocess.run`:
environment variables read at import time (torch's, Python's own flags) keep the server's values,
and a signal ends it as multiprocessing does (exit code 1), not as Python's main does (130 for
Ctrl-C). Tests of signals, of DDP ranks and of shell scripts use a real interpreter.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What every seglab entry point imports before it does anything: loaded once, in the server.
PRELOADED = ("torch", "torchvision", "lightning", "hydra", "src.utils.build")

_FORKSERVER = multiprocessing.get_context("forkserver")
_FORKSERVER.set_forkserver_preload(list(PRELOADED))


def run_script(
    command: Sequence[str],
    *,
    cwd: str | Path = ROOT,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """`subprocess.run(command, cwd=..., env=..., capture_output=True, text=True, timeout=...)` for a Python script.

    `command` is `[sys.executable, "path/to/script.py", *args]`; anything else (a module run with
    `-m`, a shell script) runs through subprocess.run unchanged.
    """
    command = [str(part) for part in command]
    is_python_script = len(command) >= 2 and command[0] == sys.executable and command[1].endswith(".py")
    forked = _run_forked(command, cwd, env, timeout) if is_python_script else None
    if forked is not None:
        return forked
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _run_forked(
    command: list[str], cwd: str | Path, env: Mapping[str, str] | None, timeout: float
) -> subprocess.CompletedProcess | None:
    """Run the script in a process of the preloaded forkserver; None where no forkserver can start."""
    environment = dict(os.environ if env is None else env)
    with tempfile.TemporaryDirectory(prefix="run_script_") as scratch:
        stdout, stderr = Path(scratch, "stdout"), Path(scratch, "stderr")
        process = _FORKSERVER.Process(
            target=_run_as_main, args=(command[1:], str(cwd), environment, str(stdout), str(stderr))
        )
        try:
            process.start()
        except OSError:  # its socket path too long for AF_UNIX, say: the caller takes the slow way
            return None
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(command, timeout, stdout.read_text(), stderr.read_text())
        return subprocess.CompletedProcess(
            command, process.exitcode, stdout.read_text(), stderr.read_text()
        )


def _run_as_main(
    argv: list[str], cwd: str, env: dict[str, str], stdout: str, stderr: str
) -> None:
    """In the forked process: become `python argv[0] argv[1:]` and run the script as __main__."""
    _redirect(1, stdout)
    _redirect(2, stderr)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = list(argv)
    # The interpreter puts the script's folder first on sys.path, then PYTHONPATH's entries.
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:1] = [str(Path(argv[0]).resolve().parent), *extra]
    try:
        runpy.run_path(argv[0], run_name="__main__")
    finally:
        _shut_down_like_the_interpreter()


def _redirect(fd: int, path: str) -> None:
    """Point file descriptor `fd` at a new file (the child's stdout or stderr)."""
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(target, fd)
    os.close(target)


def _shut_down_like_the_interpreter() -> None:
    """What Python does at exit and multiprocessing's os._exit skips: join threads, run atexit, flush."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (a job or DDP child names its run dir)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids
