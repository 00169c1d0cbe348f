"""tests/helpers/cli.run_script gives what `subprocess.run` of the same command gives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import run_script

SCRIPT = """\
import atexit, os, sys, threading, time
atexit.register(lambda: print("atexit ran"))
# a non-daemon thread the interpreter waits for before its atexit handlers
threading.Thread(target=lambda: (time.sleep(0.2), print("thread done"))).start()
print("argv", sys.argv)
print("cwd", os.getcwd())
print("env", os.environ.get("RUN_SCRIPT_PROBE"), "HOME" in os.environ)
print("path0", sys.path[0])
print("imports", __import__("probe_module").VALUE)
print("to stderr", file=sys.stderr)
if sys.argv[1] == "raise":
    raise ValueError("raised on purpose")
sys.exit(int(sys.argv[1]))
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    """A script that prints what it was started with, and a module it imports from PYTHONPATH."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "probe_module.py").write_text("VALUE = 'from PYTHONPATH'\n")
    path = tmp_path / "bin" / "probe.py"
    path.parent.mkdir()
    path.write_text(SCRIPT)
    return path


@pytest.mark.parametrize("argument", ["0", "3", "raise"])
def test_run_script_matches_subprocess_run(script: Path, tmp_path: Path, argument: str) -> None:
    env = {"PATH": os.environ["PATH"], "RUN_SCRIPT_PROBE": "seen", "PYTHONPATH": str(tmp_path / "lib")}
    command = [sys.executable, str(script), argument]
    real = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    forked = run_script(command, cwd=tmp_path, env=env, timeout=60)
    assert forked.returncode == real.returncode == {"0": 0, "3": 3, "raise": 1}[argument]
    assert forked.stdout == real.stdout
    assert "env seen False" in real.stdout  # the given environment replaces the caller's
    assert real.stdout.endswith("thread done\natexit ran\n")
    assert f"path0 {script.parent}" in real.stdout
    if argument == "raise":
        assert "Traceback" in forked.stderr and "ValueError: raised on purpose" in forked.stderr
    else:
        assert forked.stderr == real.stderr == "to stderr\n"


def test_run_script_times_out_like_subprocess_run(tmp_path: Path) -> None:
    sleeper = tmp_path / "sleep.py"
    sleeper.write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    with pytest.raises(subprocess.TimeoutExpired) as timeout:
        run_script([sys.executable, str(sleeper)], cwd=tmp_path, timeout=2)
    assert timeout.value.output == "started\n"
