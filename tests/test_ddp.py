"""Multirun x DDP mechanism (src/utils/ddp.py), in process: the child command, the watcher, per-job cleanup."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import open_dict, read_write
from torch import nn

from src.callbacks.sync_batchnorm import AutoSyncBatchNorm
from src.utils import ddp
from tests.conftest import ROOT, SMOKE_DATA, compose_config

# What Lightning's launcher exports for its children; every test here must leave them as found.
LAUNCH_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "OMP_NUM_THREADS",
)


@pytest.fixture
def clean_env():
    """No DDP variables before the test; the environment and thread count are put back after it."""
    saved, threads = dict(os.environ), torch.get_num_threads()
    for key in LAUNCH_ENV:
        os.environ.pop(key, None)
    yield
    os.environ.clear()
    os.environ.update(saved)
    torch.set_num_threads(threads)


@pytest.fixture
def job_config(tmp_path: Path):
    """HydraConfig of job 3 of a sweep, as the basic launcher sets it before calling the task."""
    cfg = compose_config(
        "train",
        [
            "debug=smoke", *SMOKE_DATA,
            "seed=7",
            "data.root=${paths.data_dir}/elsewhere",
            "hydra.job.chdir=false",
            f"hydra.sweep.dir={tmp_path}/sweep",
            "hydra/launcher=basic",
        ],
        tmp_path / "job",
    )
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.job.num = 3
        cfg.hydra.mode = "MULTIRUN"
        cfg.hydra.runtime.output_dir = str(tmp_path / "sweep" / "3 (a=b, [c])")
        cfg.hydra.overrides.hydra.append("hydra.mode=MULTIRUN")
    HydraConfig().set_config(cfg)
    ddp.install(ROOT / "src" / "train.py")
    return cfg


class FakePopen:
    """Records what Lightning's launcher would start, and behaves like a child that exited cleanly."""

    started: list[FakePopen] = []

    def __init__(self, command, env=None, cwd=None) -> None:
        self.command, self.env, self.cwd = list(command), env, cwd
        self.pid, self.returncode = 0, 0
        FakePopen.started.append(self)

    def poll(self) -> int:
        return 0

    def wait(self, timeout: float | None = None) -> int:
        return 0


def test_lightning_helpers_are_where_and_as_seglab_patches_them() -> None:
    # Fails on a Lightning upgrade that moves, renames or re-signs the helpers (pinned: lightning==2.6.*).
    fabric = importlib.import_module(ddp.LAUNCHER_MODULES[0])
    source = inspect.getsource(fabric)
    assert "def _hydra_subprocess_cmd(local_rank: int) -> tuple[Sequence[str], str]:" in source
    assert (
        "def _launch_process_observer(child_processes: list[subprocess.Popen]) -> None:" in source
    )
    for name in ddp.LAUNCHER_MODULES:
        launcher = inspect.getsource(importlib.import_module(name)._SubprocessScriptLauncher)
        assert (
            "_hydra_subprocess_cmd(" in launcher
            and "_launch_process_observer(self.procs)" in launcher
        )
        assert "self.procs" in launcher  # where a job's children are kept
    # each module binds the names itself, so both must be patched
    pytorch = importlib.import_module(ddp.LAUNCHER_MODULES[1])
    assert (
        "from lightning.fabric.strategies.launchers.subprocess_script import"
        in inspect.getsource(pytorch)
    )


@pytest.mark.parametrize("module_name", ddp.LAUNCHER_MODULES)
def test_launcher_starts_children_as_single_runs_of_this_job(
    module_name: str, job_config, clean_env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module = importlib.import_module(module_name)
    monkeypatch.setattr(module.subprocess, "Popen", FakePopen)
    monkeypatch.setattr(sys, "argv", ["src/train.py", "-m", "--config-name", "train", "seed=7,8"])
    FakePopen.started = []
    launcher = module._SubprocessScriptLauncher(
        LightningEnvironment(), num_processes=3, num_nodes=1
    )

    with ddp.job_scope():
        assert launcher.launch(lambda: "trained") == "trained"
        assert os.environ["WORLD_SIZE"] == "3"  # Lightning's own variables, set for the job...
        # seglab's watcher, not Lightning's (which would SIGKILL this process when a child fails)
        assert [w.children for w in ddp._watchers] == [launcher.procs]
    for key in LAUNCH_ENV:
        assert key not in os.environ  # ...and gone after it
    assert ddp._watchers == []

    assert [p.env["LOCAL_RANK"] for p in FakePopen.started] == ["1", "2"]
    command = FakePopen.started[0].command
    job_dir = job_config.hydra.runtime.output_dir
    assert command[:2] == [sys.executable, str(ROOT / "src" / "train.py")]
    assert "-m" not in command and "seed=7,8" not in command
    assert command[2:4] == ["--config-name", "train"]
    # the job's own overrides, unresolved, then the hydra ones it keeps and those that make it one run
    assert "data.root=${paths.data_dir}/elsewhere" in command and "seed=7" in command
    assert "hydra.job.chdir=false" in command
    assert not [c for c in command if c.startswith(("hydra.sweep.dir", "hydra/launcher"))]
    assert command.count("hydra.mode=RUN") == 1 and "hydra.mode=MULTIRUN" not in command
    assert command[-3:] == ["hydra.output_subdir=null", "hydra.mode=RUN", "hydra.job.num=3"]
    run_dir = next(c for c in command if c.startswith("hydra.run.dir="))
    assert OverridesParser.create().parse_override(run_dir).value() == job_dir
    assert FakePopen.started[0].cwd == job_config.hydra.runtime.cwd


def test_child_command_keeps_only_config_flags_of_the_command_line(job_config, monkeypatch) -> None:
    argv = ["src/train.py", "--multirun", "-cd", "/my/conf", "--config-name=exp", "-m", "seed=1,2"]
    monkeypatch.setattr(sys, "argv", argv)
    command, _ = ddp.child_command(1)
    assert command[2:5] == ["-cd", "/my/conf", "--config-name=exp"]
    assert "--multirun" not in command and "seed=1,2" not in command


def test_watcher_stops_siblings_of_a_failed_child_but_not_this_process() -> None:
    failing = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    sleeping = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    watcher = ddp.ChildWatcher([failing, sleeping], period_s=0.1)
    watcher.start()
    watcher.join(timeout=60)
    assert not watcher.is_alive()
    assert watcher.failed is failing and failing.returncode == 3
    assert sleeping.poll() == -9  # SIGKILL: SIGTERM does not stop a process blocked in a collective


def test_job_scope_ends_a_failed_jobs_children_group_and_changes(
    clean_env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(ddp, "FAILED_GRACE_S", 0.2)
    before = dict(os.environ)
    threads, rank = torch.get_num_threads(), rank_zero_only.rank
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])

    with pytest.raises(RuntimeError, match="job failed"), ddp.job_scope():
        # what a DDP job leaves behind in the sweep process
        os.environ.update(
            LOCAL_RANK="0",
            NODE_RANK="0",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT="29999",
            WORLD_SIZE="2",
            OMP_NUM_THREADS="1",
        )
        torch.set_num_threads(1)
        rank_zero_only.rank = 5
        store = f"file://{tmp_path / 'store'}"
        torch.distributed.init_process_group("gloo", init_method=store, rank=0, world_size=1)
        ddp.watch_children([child])
        watcher = ddp._watchers[-1]
        raise RuntimeError("job failed")

    assert not torch.distributed.is_initialized()
    assert dict(os.environ) == before
    assert torch.get_num_threads() == threads and rank_zero_only.rank == rank
    assert child.poll() == -9
    assert not watcher.is_alive() and watcher not in ddp._watchers
    assert not [t for t in threading.enumerate() if t.name == watcher.name]


def test_override_quoting_round_trips_through_hydras_parser() -> None:
    parser = OverridesParser.create()
    for path in ["/a/b", "/runs/3 (a=b, [c])", "/it's/x", "C:\\runs\\x"]:
        assert parser.parse_override(f"hydra.run.dir={ddp._quote(path)}").value() == path


@pytest.mark.parametrize(
    ("world_size", "device", "synced"),
    [
        (2, torch.device("cuda", 0), True),
        (2, torch.device("cpu"), False),
        (1, torch.device("cuda", 0), False),
    ],
)
def test_sync_batchnorm_only_under_multi_gpu_ddp(
    world_size: int, device: torch.device, synced: bool
) -> None:
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    module[1].running_mean.fill_(0.5)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = SimpleNamespace(world_size=world_size, strategy=SimpleNamespace(root_device=device))
    callback = AutoSyncBatchNorm()

    callback.setup(trainer, module, stage="fit")
    n_sync = sum(isinstance(m, nn.SyncBatchNorm) for m in module.modules())
    assert n_sync == (2 if synced else 0)
    callback.teardown(trainer, module, stage="fit")
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in module.modules())
    after = module.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
