"""Run `python <script> ...` the way a user's shell would, without paying the interpreter's imports each time.

About half of the suite's time was spent starting interpreters: every `python src/train.py` spends
~6 s importing torch, torchvision and Lightning (which imports all of torchmetrics) before it reads
its first argument. `run_script` runs the script in a process forked from a server that has
imported those libraries once (multiprocessing's forkserver with preloaded modules), so a command
that fails on a bad value costs ~1 s instead of ~9. The script still runs as `__main__` in its own
process, with its own argv, working directory, environment, stdout and stderr, exit code and
interpreter exit (non-daemon threads joined, atexit handlers run), as `subprocess.run` gives it.

The sweep runner starts its CPU jobs the same way (src/sweeps/warm.py, which this module uses).
The forked process is not a fresh interpreter in two ways, so some tests keep `subprocess.run`:
environment variables read at import time (torch's, Python's own flags) keep the server's values,
and a signal ends it as multiprocessing does (exit code 1), not as Python's main does (130 for
Ctrl-C). Tests of signals, of DDP ranks and of shell scripts use a real interpreter.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from src.sweeps.warm import forkserver, run_as_main

ROOT = Path(__file__).resolve().parents[2]
# the server the sweep runner forks its CPU jobs from: torch, Lightning, Hydra imported once
_FORKSERVER = forkserver()


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
            target=run_as_main, args=(command[1:], str(cwd), environment, str(stdout), str(stderr))
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


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line or stdout contains `text` (a job or DDP child names its run
    dir; a job forked from a preloaded server, whose command line is the server's, writes into it)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            stdout = os.readlink(proc / "fd" / "1") if (proc / "fd" / "1").exists() else ""
        except OSError:
            continue
        if text in cmdline or text in stdout:
            pids.append(int(proc.name))
    return pids


def run_in_session(
    command: Sequence[str],
    timeout: float,
    env: Mapping[str, str] | None = None,
    on_timeout: Callable[[], object] | None = None,
) -> subprocess.CompletedProcess:
    """Run `command` in its own session, stdout and stderr together; on timeout kill the whole
    session (DDP children, sweep jobs), call `on_timeout` and fail the test with the output."""
    import pytest

    proc = subprocess.Popen(
        list(command), cwd=ROOT, env=None if env is None else dict(env), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        if on_timeout is not None:
            on_timeout()
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(map(str, command))} did not finish in {timeout} s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(list(command), proc.returncode, out, "")
