"""metrics.json says what a job really ran (world size, nodes, precision, seed, code revision, time)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict, read_write

from src.callbacks import metrics_file
from src.callbacks.metrics_file import MetricsFile, git_revision
from tests.conftest import ROOT
from tests.helpers.faults import CrashOnRank


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def git_dirs(repo: Path) -> tuple[Path, Path]:
    """(this checkout's git dir, the dir its refs live in): both `.git` in a plain clone; in a
    `git worktree`, `.git` is a file naming the worktree's own dir, whose `commondir` names the rest."""
    dot_git = repo / ".git"
    if dot_git.is_dir():
        return dot_git, dot_git
    own = (repo / dot_git.read_text().strip().removeprefix("gitdir: ")).resolve()
    common = own / "commondir"
    return own, (own / common.read_text().strip()).resolve() if common.exists() else own


def head_from_git_files(repo: Path) -> str:
    """HEAD's commit read from the git files themselves (an independent path to the same answer)."""
    own, common = git_dirs(repo)
    head = (own / "HEAD").read_text().strip()
    if not head.startswith("ref: "):
        return head
    ref = head.removeprefix("ref: ")
    for folder in (own, common):
        if (folder / ref).exists():
            return (folder / ref).read_text().strip()
    packed = (common / "packed-refs").read_text().splitlines()
    return next(line.split()[0] for line in packed if line.endswith(" " + ref))


def test_git_revision_of_a_checkout_and_its_dirty_flag(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git(tmp_path, "add", "code.py")
    git(tmp_path, "commit", "-q", "-m", "first")
    clean = git_revision.__wrapped__(tmp_path)
    assert clean == {"commit": head_from_git_files(tmp_path), "dirty": False}
    (tmp_path / "untracked.txt").write_text("not code\n")
    assert git_revision.__wrapped__(tmp_path)["dirty"] is False  # only tracked files count
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_revision.__wrapped__(tmp_path) == {"commit": clean["commit"], "dirty": True}


def test_git_revision_outside_a_checkout_is_unknown(tmp_path: Path) -> None:
    assert git_revision.__wrapped__(tmp_path) == {"commit": "unknown", "dirty": None}


def test_this_repository_revision() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert git_revision.__wrapped__(ROOT)["commit"] == head_from_git_files(ROOT)


def test_summary_records_provenance(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "123")
    # the callback's clock: built at 0 s, the fit starts at 100 s, metrics.json is written at 112.3456 s
    clock = iter([0.0, 100.0, 112.3456])
    monkeypatch.setattr(metrics_file, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    trainer = SimpleNamespace(world_size=4, num_nodes=2, precision="bf16-mixed", global_step=10)
    callback = MetricsFile(str(tmp_path / "metrics.json"))
    callback.on_fit_start(trainer, None)
    summary = callback.summary(trainer)
    assert {k: summary[k] for k in ("world_size", "num_nodes", "precision", "seed")} == {
        "world_size": 4,
        "num_nodes": 2,
        "precision": "bf16-mixed",
        "seed": 123,
    }
    assert summary["git"] == git_revision()
    assert summary["wall_time_s"] == 12.346  # the fit's own span (a resumed fit reports its own), to the ms


def set_job_num(cfg, num: int) -> None:
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.job.num = num
    HydraConfig().set_config(cfg)


def test_crash_with_a_job_fires_only_in_that_job_of_a_sweep(smoke_cfg) -> None:
    cfg = smoke_cfg()
    crash = CrashOnRank(rank=1, batch_idx=1, job=1)
    set_job_num(cfg, 0)
    crash.on_train_batch_start(SimpleNamespace(global_rank=1), None, None, 1)  # another job
    set_job_num(cfg, 1)
    with pytest.raises(RuntimeError, match="seglab fault injection: crashed rank 1"):
        crash.on_train_batch_start(SimpleNamespace(global_rank=1), None, None, 1)


def test_crash_on_rank_raises_only_on_its_rank_and_batch() -> None:
    crash = CrashOnRank(rank=1, batch_idx=1)
    crash.on_train_batch_start(SimpleNamespace(global_rank=0), None, None, 1)
    crash.on_train_batch_start(SimpleNamespace(global_rank=1), None, None, 0)
    with pytest.raises(RuntimeError, match="seglab fault injection: crashed rank 1"):
        crash.on_train_batch_start(SimpleNamespace(global_rank=1), None, None, 1)
