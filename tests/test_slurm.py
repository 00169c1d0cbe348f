"""Sweep jobs under a real SLURM (scripts/local_slurm.py): submitted through submitit, DDP over SLURM
tasks, and Lightning's requeue on USR1. Skipped with the script's reason where SLURM cannot start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import DictConfig

from tests.conftest import ROOT, SMOKE_DATA, compose_config
from tests.helpers.slurm import local_slurm, slurm_env  # noqa: F401 (fixtures used below)

pytest.importorskip("submitit")
from src.sweeps.backends import JOB_OUTPUT, Job  # noqa: E402
from src.sweeps.slurm import KILLED_EXIT_CODE, SUBMITIT_DIR, SlurmBackend  # noqa: E402

# every test submits to the local SLURM, with its variables in the environment
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_env")]
# A job that SLURM can never schedule pends forever: every wait ends here (5x a smoke run on 2 busy cores).
TIMEOUT_S = 240


def smoke_overrides(data_dir: Path, tmp_path: Path, *extra: str) -> list[str]:
    """The overrides of a `debug=smoke` run on the session's data, logging under tmp_path."""
    return [
        "debug=smoke",
        *SMOKE_DATA,
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={tmp_path}/logs",
        *extra,
    ]


def sweep_config(tmp_path: Path, overrides: list[str]) -> DictConfig:
    """A sweep's config as the runner composes it, with hydra/launcher=slurm_ddp on CPUs."""
    runner = [
        "hydra/launcher=slurm_ddp",
        "hydra.launcher.gpus_per_node=null",
        "sweep.backend=slurm",
        f"sweep.dir={tmp_path / 'sweep'}",
    ]
    return compose_config("train", [*overrides, *runner], tmp_path / "unused")


def make_job(tmp_path: Path, number: int, overrides: list[str]) -> Job:
    run_dir = tmp_path / "sweep" / str(number)
    return Job(
        number=number,
        overrides=[*overrides, f"hydra.run.dir={run_dir}"],
        run_dir=run_dir,
        env={},
        slot=number,
    )


def wait_for_exit(backend: SlurmBackend, handles: list, jobs: list[Job]) -> list[int]:
    """Every job's exit code; after TIMEOUT_S the jobs are cancelled and the test fails with their output."""
    deadline = time.monotonic() + TIMEOUT_S
    codes: list[int | None] = [None] * len(handles)
    while None in codes:
        if time.monotonic() > deadline:
            subprocess.run(["scancel", *(h.job_id for h in handles)], check=False)
            outputs = "\n".join(_tail(job.run_dir / JOB_OUTPUT) for job in jobs)
            pytest.fail(
                f"SLURM jobs {[h.job_id for h in handles]} not done in {TIMEOUT_S} s:\n{outputs}"
            )
        codes = [
            code if code is not None else backend.poll(h)
            for code, h in zip(codes, handles, strict=True)
        ]
        time.sleep(0.5)
    return codes


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else f"(no {path})"


def completion_records(*job_ids: str) -> list[dict[str, str]]:
    """SLURM's own record of the jobs (`sacct`, here read from the completion log), oldest first."""
    argv = [
        "sacct",
        "--parsable2",
        "--format=JobID,JobName,State,NNodes,NCPUS",
        *(f"--jobs={j}" for j in job_ids),
    ]
    lines = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()
    names = lines[0].split("|")
    return [dict(zip(names, line.split("|"), strict=True)) for line in lines[1:]]


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture
def smoke_data(data_dir: Path, smoke_cfg) -> Path:
    """The session's smoke dataset, generated before jobs that run at the same time would each write it."""
    hydra.utils.instantiate(smoke_cfg(f"paths.data_dir={data_dir}").data).prepare_data()
    return data_dir


def uninterrupted_steps(cfg: DictConfig) -> int:
    """The global step a smoke run ends at: every epoch trains limit_train_batches batches."""
    return int(cfg.trainer.max_epochs) * int(cfg.trainer.limit_train_batches)


def run_sweep(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`python src/sweep.py ... sweep.backend=slurm` in its own session; killed (and its jobs cancelled) on timeout."""
    command = [
        sys.executable, "src/sweep.py", f"hydra.sweep.dir={sweep_dir}", "sweep.backend=slurm",
        "hydra/launcher=slurm_ddp", "hydra.launcher.gpus_per_node=null", *overrides,
    ]  # fmt: skip
    runner = subprocess.Popen(
        command,
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = runner.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(runner.pid, signal.SIGKILL)
        subprocess.run(["scancel", "--me"], check=False)
        output, _ = runner.communicate()
        pytest.fail(f"the sweep did not finish in {TIMEOUT_S} s:\n{output[-4000:]}")
    return subprocess.CompletedProcess(command, runner.returncode, output, "")


def slurm_job_ids(run_dir: Path) -> list[str]:
    """The SLURM jobs submitted for a run dir (submitit keeps one folder per job id there)."""
    return sorted(path.name for path in (run_dir / SUBMITIT_DIR).iterdir() if path.name.isdigit())


def test_sweep_of_two_slurm_jobs_one_preempted_resumes_to_the_same_step(
    smoke_data: Path, tmp_path: Path
) -> None:
    base = smoke_overrides(smoke_data, tmp_path)
    sweep_dir = tmp_path / "sweep"
    # SLURM sends job 1 USR1 right after its step 2 (first run only): a pre-emption at a known step
    preempt_job_1 = [
        "+callbacks.fault._target_=tests.helpers.faults.FaultInjection",
        "+callbacks.fault.kind=slurm_usr1",
        "+callbacks.fault.at_step=2",
        "+callbacks.fault.job=1",
    ]
    result = run_sweep(sweep_dir, *base, *preempt_job_1, "seed=3,4", "sweep.slots=2")
    assert result.returncode == 0, result.stdout[-4000:]
    uninterrupted, preempted = (metrics(sweep_dir / str(number)) for number in (0, 1))
    assert (uninterrupted["seed"], preempted["seed"]) == (3, 4)
    for summary in (uninterrupted, preempted):
        assert summary["world_size"] == 1
        assert 0 <= summary["final"]["val/mIoU"] <= summary["final"]["val/mIoU_best"] <= 1
    steps = uninterrupted_steps(compose_config("train", base, tmp_path / "unused"))
    assert preempted["global_step"] == uninterrupted["global_step"] == steps
    # Lightning saved at step 2 and requeued; the job's second run resumed from that file
    (hpc_checkpoint,) = (sweep_dir / "1").glob("hpc_ckpt_*.ckpt")
    assert torch.load(hpc_checkpoint, map_location="cpu", weights_only=True)["global_step"] == 2
    resumed = (
        f"resuming from {hpc_checkpoint} (Lightning's SLURM requeue checkpoint), global step 2"
    )
    assert resumed in (sweep_dir / "1" / "train.log").read_text()
    assert not list((sweep_dir / "0").glob("hpc_ckpt_*.ckpt"))
    # two SLURM jobs, one per sweep job; the second ran twice under its id: requeued, then completed
    (first,), (second,) = slurm_job_ids(sweep_dir / "0"), slurm_job_ids(sweep_dir / "1")
    records = completion_records(first, second)
    history = {
        job_id: [(r["JobName"], r["State"]) for r in records if r["JobID"] == job_id]
        for job_id in (first, second)
    }
    assert history == {
        first: [("train-0", "COMPLETED")],
        second: [("train-1", "PENDING"), ("train-1", "COMPLETED")],
    }


def test_ddp_job_of_two_slurm_tasks(smoke_data: Path, tmp_path: Path) -> None:
    base = smoke_overrides(smoke_data, tmp_path, "trainer.devices=2")
    backend = SlurmBackend(sweep_config(tmp_path, base))
    job = make_job(tmp_path, 0, base)
    handle = backend.submit(job)
    assert wait_for_exit(backend, [handle], [job]) == [0]
    assert metrics(job.run_dir)["world_size"] == 2
    # srun started both ranks (SLURM's tasks); Lightning started none of its own
    log = (job.run_dir / "train.log").read_text()
    assert "MEMBER: 1/2" in log and "MEMBER: 2/2" in log
    assert {p.name for p in handle.paths.folder.glob("*_log.out")} == {
        f"{handle.job_id}_0_log.out",
        f"{handle.job_id}_1_log.out",
    }
    (record,) = completion_records(handle.job_id)
    assert (record["State"], record["NCPUS"]) == ("COMPLETED", "2")


def test_cancelled_pending_job_reports_killed(tmp_path: Path) -> None:
    # a job whose start is an hour away: cancelled, it never writes a result, and only SLURM's
    # completion record says it is over (without it submitit would wait forever)
    base = ["debug=smoke", "+hydra.launcher.additional_parameters.begin=now+3600"]
    backend = SlurmBackend(sweep_config(tmp_path, base))
    job = make_job(tmp_path, 0, ["debug=smoke"])
    handle = backend.submit(job)
    assert backend.poll(handle) is None
    backend.cancel(handle)
    assert backend.poll(handle) == KILLED_EXIT_CODE
    assert [r["State"] for r in completion_records(handle.job_id)] == ["CANCELLED"]
