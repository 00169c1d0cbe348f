"""Sweep jobs under a real SLURM (scripts/local_slurm.py): submitted through submitit, DDP over SLURM
tasks, and Lightning's requeue on USR1. Skipped with the script's reason where SLURM cannot start;
the resources a job asks for are checked without SLURM.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import DictConfig

from tests.conftest import SMOKE_DATA, compose_config
from tests.helpers.cli import run_in_session
from tests.helpers.slurm import local_slurm, slurm_env  # noqa: F401 (fixtures used below)

pytest.importorskip("submitit")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")  # hydra/launcher=slurm_ddp
from src.sweeps.backends import JOB_OUTPUT, Job  # noqa: E402
from src.sweeps.slurm import KILLED_EXIT_CODE, SUBMITIT_DIR, SlurmBackend, queue_state  # noqa: E402
from src.sweeps.slurm_resources import job_parameters  # noqa: E402
from src.utils.errors import UserError  # noqa: E402


def on_local_slurm(test):
    """Mark a test that submits to the local SLURM (slow), with its variables in the environment."""
    return pytest.mark.slow(pytest.mark.usefixtures("slurm_env")(test))


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
    return run_in_session(command, TIMEOUT_S, on_timeout=cancel_my_jobs)


def cancel_my_jobs() -> None:
    """What a timed-out sweep left in SLURM's queue."""
    subprocess.run(["scancel", "--me"], check=False)


def slurm_job_ids(run_dir: Path) -> list[str]:
    """The SLURM jobs submitted for a run dir (submitit keeps one folder per job id there)."""
    return sorted(path.name for path in (run_dir / SUBMITIT_DIR).iterdir() if path.name.isdigit())


@on_local_slurm
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


@on_local_slurm
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


@on_local_slurm
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


@on_local_slurm
def test_a_new_backend_stops_the_jobs_a_killed_runner_left_in_the_queue(tmp_path: Path) -> None:
    # the runner that submitted this job died without stopping it; the next run of the sweep must
    # not start a second run in the same dir while it is queued
    base = ["debug=smoke", "+hydra.launcher.additional_parameters.begin=now+3600"]
    cfg = sweep_config(tmp_path, base)
    orphan = SlurmBackend(cfg).submit(make_job(tmp_path, 0, ["debug=smoke"]))
    assert queue_state(orphan.job_id) == "PENDING"
    SlurmBackend(cfg)
    assert queue_state(orphan.job_id) == ""
    assert [r["State"] for r in completion_records(orphan.job_id)] == ["CANCELLED"]


@on_local_slurm
def test_cancel_sigterms_a_running_job_which_saves_its_checkpoint(
    smoke_data: Path, tmp_path: Path
) -> None:
    base = smoke_overrides(smoke_data, tmp_path, "trainer.max_epochs=1000")
    backend = SlurmBackend(sweep_config(tmp_path, base))
    job = make_job(tmp_path, 0, base)
    handle = backend.submit(job)
    last = job.run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + TIMEOUT_S
    while not last.exists():  # epoch 1 is done: the job is training epoch 2
        assert backend.poll(handle) is None, _tail(job.run_dir / JOB_OUTPUT)
        if time.monotonic() > deadline:
            subprocess.run(["scancel", handle.job_id], check=False)
            pytest.fail(f"no {last} within {TIMEOUT_S} s:\n{_tail(job.run_dir / JOB_OUTPUT)}")
        time.sleep(0.5)
    backend.cancel(handle)
    assert backend.poll(handle) == 128 + signal.SIGTERM  # train.py's own exit status
    assert "stopped by SIGTERM at global step" in (job.run_dir / "train.log").read_text()
    step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert step > int(
        compose_config("train", base, tmp_path / "unused").trainer.limit_train_batches
    )
    assert [r["State"] for r in completion_records(handle.job_id)] == ["COMPLETED"]


def test_slurm_ddp_asks_one_task_per_device_of_each_job(tmp_path: Path) -> None:
    cfg = compose_config(
        "train",
        [
            "debug=smoke",
            "hydra/launcher=slurm_ddp",
            "hydra.launcher.partition=gpu",
            "trainer.devices=2",
        ],
        tmp_path,
    )
    sweep_wide = job_parameters(cfg, ["seed=1"])
    assert {
        k: sweep_wide[k] for k in ("nodes", "tasks_per_node", "gpus_per_node", "timeout_min")
    } == {
        "nodes": 1,
        "tasks_per_node": 2,
        "gpus_per_node": 2,
        "timeout_min": 1440,
    }
    assert sweep_wide["slurm_partition"] == "gpu"
    # Lightning's requeue signal, not submitit's USR2 (whose default action kills train.py)
    assert sweep_wide["slurm_additional_parameters"] == {"signal": "USR1@120"}
    assert "name" not in sweep_wide and "slurm_submitit_folder" not in sweep_wide
    # a job of the sweep that trains on 4 devices of 2 nodes asks for them
    own = job_parameters(cfg, ["trainer.devices=4", "trainer.num_nodes=2"])
    assert (own["nodes"], own["tasks_per_node"], own["gpus_per_node"]) == (2, 4, 4)


def test_resources_that_cannot_run_the_job_are_refused(tmp_path: Path) -> None:
    basic = compose_config("train", ["debug=smoke"], tmp_path)
    with pytest.raises(UserError, match="hydra/launcher=slurm_ddp"):
        job_parameters(basic, [])
    fixed = compose_config(
        "train", ["debug=smoke", "hydra/launcher=submitit_slurm", "trainer.devices=2"], tmp_path
    )
    with pytest.raises(
        UserError, match=r"1 node\(s\) x 1 task\(s\) but trainer.num_nodes=1 x trainer.devices=2"
    ):
        job_parameters(fixed, [])
