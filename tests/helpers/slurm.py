"""A real single-node SLURM for the tests that submit jobs: `scripts/local_slurm.py`, once per session.

`local_slurm` installs (where missing) and starts the cluster through the script users run, skips with
the script's own reason where it cannot (not root, no apt-get), and stops it at the end of the
session. `slurm_env` puts its variables (SLURM_CONF, PATH with the sacct that reads the completion
log) into this process's environment for one test, so submitit and the jobs it starts find it.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "local_slurm.py"
CANNOT_START = 2  # the script's exit status where SLURM cannot run here
INSTALL_TIMEOUT_S = 300
START_TIMEOUT_S = 90


def local_slurm_script(
    command: str, state_dir: Path, timeout: float
) -> subprocess.CompletedProcess:
    """`python scripts/local_slurm.py <command> --state-dir <state_dir>`, output captured."""
    argv = [sys.executable, str(SCRIPT), command, "--state-dir", str(state_dir)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def parse_exports(output: str) -> dict[str, str]:
    """The `export KEY=value` lines `start` prints, as a dict."""
    env = {}
    for line in output.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            env[key] = value
    return env


def _started_or_skip(result: subprocess.CompletedProcess, command: str) -> None:
    if result.returncode == CANNOT_START:
        pytest.skip(f"no local SLURM: {result.stderr.strip()}")
    assert result.returncode == 0, (
        f"local_slurm.py {command} failed:\n{result.stdout}\n{result.stderr}"
    )


@pytest.fixture(scope="session")
def local_slurm() -> Iterator[dict[str, str]]:
    """The variables of a running local SLURM (SLURM_CONF, PATH); the cluster is stopped after the session."""
    # not pytest's tmp dirs: they are private to their owner, and munged needs a socket dir all can enter
    state_dir = Path(tempfile.mkdtemp(prefix="seglab-slurm-"))
    state_dir.chmod(0o755)
    try:
        _started_or_skip(local_slurm_script("install", state_dir, INSTALL_TIMEOUT_S), "install")
        started = local_slurm_script("start", state_dir, START_TIMEOUT_S)
        _started_or_skip(started, "start")
        yield parse_exports(started.stdout)
    finally:
        local_slurm_script("stop", state_dir, START_TIMEOUT_S)
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def slurm_env(local_slurm: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This test's environment with the local SLURM's variables (restored afterwards)."""
    for key, value in local_slurm.items():
        monkeypatch.setenv(key, value)
    return local_slurm
