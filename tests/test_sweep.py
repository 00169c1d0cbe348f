"""`python src/sweep.py`: grids and Optuna searches in parallel slots, pruning, resume after a stop.

The scheduling tests run tests/helpers/fake_train.py as each job (`sweep.script=...`): it composes
the same config and writes the same files as src/train.py in a second, and its val/mIoU depends on
`+fake.quality` in a known way. tests/test_optuna.py and the DDP test below run src/train.py itself.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from src.sweeps.command import check_values_compose, parse_command
from src.sweeps.grid import expand_grid
from src.sweeps.journal import JOURNAL_FILE
from src.sweeps.resources import cpu_count, plan_slots
from src.utils.errors import UserError
from tests.conftest import ROOT, SMOKE_DATA
from tests.helpers.cli import processes_mentioning, run_script

# Every job of these sweeps is the fake trainer, on the CPU (so a GPU machine runs them the same way);
# its JSON "checkpoints" are not seglab's, so the run-dir guard's checkpoint check is off.
FAKE = ("sweep.script=tests/helpers/fake_train.py", "~hydra.callbacks.run_dir_guard", "trainer.accelerator=cpu")
TIMEOUT_S = 300


def sweep_cmd(sweep_dir: Path, *overrides: str) -> list[str]:
    """`python src/sweep.py` writing its sweep into `sweep_dir`."""
    return [sys.executable, "src/sweep.py", f"hydra.sweep.dir={sweep_dir}", *overrides]


def journal(sweep_dir: Path) -> list[dict]:
    """The runner's journal events."""
    return [json.loads(line) for line in (sweep_dir / JOURNAL_FILE).read_text().splitlines()]


def final_states(sweep_dir: Path) -> dict[str, str]:
    """Each job dir's last recorded state."""
    return {e["job"]: e["state"] for e in journal(sweep_dir) if e["event"] == "end"}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def load_study(sweep_dir: Path):
    """The study in the sweep dir's journal file."""
    optuna = pytest.importorskip("optuna")
    from src.sweeps.trial import open_storage

    manifest = read_json(sweep_dir / "sweep.json")
    return optuna.load_study(study_name=manifest["study_name"], storage=open_storage(manifest["storage"]))


# --- the command line --------------------------------------------------------------------------


def test_grid_jobs_are_the_ones_of_dash_m_in_its_order() -> None:
    command = parse_command(["debug=smoke", "loss=focal_dice", "loss.focal.gamma=0,2", "loss.class_weights=null,auto", "sweep.slots=2"])
    jobs = expand_grid(command)
    assert jobs == [
        ["debug=smoke", "loss=focal_dice", "loss.focal.gamma=0", "loss.class_weights=null"],
        ["debug=smoke", "loss=focal_dice", "loss.focal.gamma=0", "loss.class_weights=auto"],
        ["debug=smoke", "loss=focal_dice", "loss.focal.gamma=2", "loss.class_weights=null"],
        ["debug=smoke", "loss=focal_dice", "loss.focal.gamma=2", "loss.class_weights=auto"],
    ]  # the runner's own sweep.slots reaches no job
    assert command.sweep_dir.name.startswith("grid-")


def test_the_same_command_finds_the_same_sweep_dir_whatever_its_slots() -> None:
    first = parse_command(["optim.lr=1e-3,3e-3", "sweep.slots=1"]).sweep_dir
    assert parse_command(["sweep.slots=4", "optim.lr=1e-3,3e-3", "-m"]).sweep_dir == first
    assert parse_command(["optim.lr=1e-3,1e-2"]).sweep_dir != first


def test_search_space_in_hydra_grammar_becomes_optuna_distributions() -> None:
    optuna = pytest.importorskip("optuna")
    command = parse_command([
        "sweep=optuna", "sweep.n_trials=8", "loss=focal_dice", "optim.lr=tag(log, interval(1e-4, 1e-2))", "loss.focal.gamma=interval(0, 5)",
        "data.batch_size=tag(int, interval(2, 8))", "seed=range(1,7,2)", "loss.class_weights=null,auto",
    ])  # fmt: skip
    space = {p.name: p.distribution() for p in command.params}
    dist = optuna.distributions
    assert space == {
        "optim.lr": dist.FloatDistribution(1e-4, 1e-2, log=True),
        "loss.focal.gamma": dist.FloatDistribution(0.0, 5.0),
        "data.batch_size": dist.IntDistribution(2, 8),
        "seed": dist.IntDistribution(1, 5, step=2),
        "loss.class_weights": dist.CategoricalDistribution([None, "auto"]),
    }
    by_name = {p.name: p for p in command.params}
    assert by_name["loss.class_weights"].assignment(None) == "loss.class_weights=null"
    assert by_name["optim.lr"].assignment(0.00123) == "optim.lr=0.00123"
    check_values_compose(command)  # every key and value composes


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["optim.lr=interval(1e-4,1e-2)"], r"interval\(\) needs a search, not a grid: add sweep=optuna"),
        (["sweep.slots=1,2"], "the runner's own settings cannot be swept"),
        (["sweep=optuna", "optim.lr=interval(1e-4,1e-2)"], "sweep.n_trials is needed"),
        (["sweep=optuna"], "nothing to search"),
    ],
)
def test_sweeps_the_runner_cannot_walk_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_command(argv)


def test_a_misspelled_value_is_named_before_any_job_starts(tmp_path: Path) -> None:
    result = run_script(sweep_cmd(tmp_path / "sweep", "loss=ce,focl"))
    assert result.returncode == 1
    assert "seglab: error: the sweep's values loss=focl" in result.stderr and "Could not find 'loss/focl'" in result.stderr
    assert not (tmp_path / "sweep").exists()


def test_train_py_refuses_a_search_config_it_was_not_started_for(tmp_path: Path) -> None:
    result = run_script([sys.executable, "src/train.py", "hparams_search=focal_optuna", f"paths.log_dir={tmp_path}"])
    assert result.returncode == 1
    assert "run it with python src/sweep.py" in result.stderr


def test_each_slot_gets_its_own_gpus_or_a_share_of_the_cores() -> None:
    config = parse_command(["sweep.slots=2", "sweep.devices_per_job=2"]).config
    slots = plan_slots(config, gpus=["3", "5", "6", "7"])
    assert [s.env() for s in slots] == [{"CUDA_VISIBLE_DEVICES": "3,5"}, {"CUDA_VISIBLE_DEVICES": "6,7"}]
    with pytest.raises(UserError, match=r"needs 4 GPUs; 3 are visible"):
        plan_slots(config, gpus=["0", "1", "2"])
    cpu = plan_slots(parse_command(["sweep.slots=3", "trainer.accelerator=cpu"]).config, gpus=["0"], cores=8)
    assert [s.env()["OMP_NUM_THREADS"] for s in cpu] == ["2", "2", "2"]


# --- scheduling, with the fake trainer ------------------------------------------------------------


@pytest.mark.slow
def test_a_slot_that_frees_starts_the_next_job_at_once(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    epoch_s = [0.9, 0.2, 0.5, 0.1, 0.7, 0.3]  # two epochs each: jobs of uneven length
    result = run_script(
        sweep_cmd(sweep, *FAKE, "sweep.slots=2", "trainer.max_epochs=2", "+fake.epoch_s=" + ",".join(map(str, epoch_s))),
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    events = journal(sweep)
    assert final_states(sweep) == {str(n): "complete" for n in range(6)}

    busy, spans, gaps = 0.0, 0.0, []
    first_start = min(e["time"] for e in events if e["event"] == "start")
    for slot in (0, 1):
        jobs = {e["job"] for e in events if e["event"] == "start" and e["resources"]["slot"] == slot}
        starts = sorted(e["time"] for e in events if e["event"] == "start" and e["job"] in jobs)
        ends = sorted(e["time"] for e in events if e["event"] == "end" and e["job"] in jobs)
        gaps += [start - end for end, start in zip(ends, starts[1:], strict=False)]
        busy += sum(end - start for start, end in zip(starts, ends, strict=True))
        spans += ends[-1] - first_start
    assert max(gaps) < 1.0, gaps  # the next job starts within a second of the last one ending
    assert 1 - busy / spans < 0.15, (busy, spans)

    threads = max(1, cpu_count() // 2)
    for number, seconds in enumerate(epoch_s):
        record = read_json(sweep / str(number) / "sweep_job.json")
        assert record["cpu_threads"] == threads and record["slot"] in (0, 1)
        seen = read_json(sweep / str(number) / "fake.json")
        assert seen["env"]["OMP_NUM_THREADS"] == str(threads)  # what the job really got
        assert f"+fake.epoch_s={seconds}" in record["overrides"]
    summary = (sweep / "summary.csv").read_text()
    assert summary.count("complete") == 6 and "CPU thread" in summary


@pytest.mark.slow
def test_a_failing_job_fails_alone_and_is_not_run_again(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    command = sweep_cmd(sweep, *FAKE, "sweep.slots=2", "trainer.max_epochs=1", "+fake.fail=false,true,false")
    result = run_script(command, timeout=TIMEOUT_S)
    assert result.returncode == 1
    assert "1 job(s) failed: 1" in result.stderr
    assert final_states(sweep) == {"0": "complete", "1": "failed", "2": "complete"}
    assert "this job's value is bad" in (sweep / "1" / "sweep_job.out").read_text()

    again = run_script(command, timeout=TIMEOUT_S)  # nothing left to run: the failed job stays failed
    assert again.returncode == 1
    assert sum(e["event"] == "start" for e in journal(sweep)) == 3


def median_pruned(order: list[float], epochs: int, startup: int) -> set[float]:
    """Which trials Optuna's MedianPruner must prune, from its rule, for the fake's metric.

    A trial's value after epoch e is q * (e + 1) / epochs: every trial grows by the same factor,
    so it is below the completed trials' median at its first epoch or never.
    """
    completed, pruned = [], set()
    for quality in order:
        if len(completed) >= startup and quality < statistics.median(completed):
            pruned.add(quality)
        else:
            completed.append(quality)
    return pruned


@pytest.mark.slow
def test_a_median_pruner_trains_less_and_finds_the_same_best(tmp_path: Path) -> None:
    epochs, qualities = 10, [0.9, 0.1, 0.3, 0.5, 0.2, 0.4]
    search = (
        *FAKE, "sweep=optuna", "sweep.seed=3", f"trainer.max_epochs={epochs}", "+fake.epoch_s=0.01",
        "+fake.quality=" + ",".join(map(str, qualities)),
    )  # fmt: skip
    pruner = ("sweep/pruner=median", "sweep.pruner.n_startup_trials=2", "sweep.pruner.n_warmup_steps=0")
    # the grid's order is fixed by the seed, whatever the slots; pruning decisions depend on which
    # trials have completed, so the pruned search runs one trial at a time
    for name, extra in (("plain", ("sweep.slots=2",)), ("pruned", pruner)):
        result = run_script(sweep_cmd(tmp_path / name, *search, *extra), timeout=TIMEOUT_S)
        assert result.returncode == 0, result.stderr[-3000:]
    plain, pruned = load_study(tmp_path / "plain"), load_study(tmp_path / "pruned")

    order = [t.params["fake.quality"] for t in plain.trials]
    assert sorted(order) == sorted(qualities)
    assert [t.params["fake.quality"] for t in pruned.trials] == order  # the same seeded search
    was_pruned = {t.params["fake.quality"] for t in pruned.trials if t.state.name == "PRUNED"}
    assert was_pruned == median_pruned(order, epochs, startup=2) != set()
    assert {t.state.name for t in plain.trials} == {"COMPLETE"}

    def epochs_trained(sweep: Path) -> int:
        return sum(read_json(sweep / str(n) / "fake.json")["epochs_trained"] for n in range(len(qualities)))

    assert epochs_trained(tmp_path / "plain") == epochs * len(qualities)
    assert epochs_trained(tmp_path / "pruned") <= 0.7 * epochs * len(qualities)
    assert plain.best_params == pruned.best_params == {"fake.quality": max(qualities)}
    for trial in pruned.trials:
        if trial.state.name == "PRUNED":
            job = tmp_path / "pruned" / trial.user_attrs["run_dir"]
            assert (job / "metrics.json").is_file() and (job / "checkpoints" / "last.ckpt").is_file()
    assert "pruned" in final_states(tmp_path / "pruned").values()


def wait_until(condition, proc: subprocess.Popen, log: Path) -> None:
    """Poll `condition` until it holds; fail with the runner's output if it ends or times out."""
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the sweep never got there:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def files_and_mtimes(job: Path) -> dict[str, int]:
    return {str(p.relative_to(job)): p.stat().st_mtime_ns for p in job.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "driver"),
    [
        pytest.param(signal.SIGTERM, "optuna", id="sigterm-search"),
        pytest.param(signal.SIGKILL, "optuna", id="sigkill-search"),
    ],
)
def test_a_stopped_sweep_continues_where_it_stopped(tmp_path: Path, signum: int, driver: str) -> None:
    sweep, log = tmp_path / "sweep", tmp_path / "runner.log"
    command = sweep_cmd(
        sweep, *FAKE, "sweep.slots=2", "trainer.max_epochs=4", "+fake.epoch_s=0.3",
        "+fake.quality=0.1,0.2,0.3,0.4,0.5,0.6", *(["sweep=optuna"] if driver == "optuna" else []),
    )  # fmt: skip
    with log.open("w") as sink:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)

    def two_done_two_checkpointed() -> bool:
        done = all((sweep / n / "metrics.json").is_file() for n in "01")
        return done and all((sweep / n / "checkpoints" / "last.ckpt").is_file() for n in "23")

    wait_until(two_done_two_checkpointed, proc, log)
    completed = {n: files_and_mtimes(sweep / n) for n in "01"}
    proc.send_signal(signum)
    stopped_at = time.monotonic()
    proc.wait(timeout=15)
    if signum != signal.SIGKILL:  # the shell's status for a process that signal ended: 143, 130
        assert proc.returncode == 128 + signum, log.read_text()[-3000:]
    while processes_mentioning(str(sweep)) and time.monotonic() - stopped_at < 15:
        time.sleep(0.1)
    assert not processes_mentioning(str(sweep)), "a job outlived its runner by 15 s"
    for n in "23":  # each interrupted job wrote its checkpoint on the way out
        assert read_json(sweep / n / "fake.json")["stopped_at"] >= 1

    again = run_script(command, timeout=TIMEOUT_S)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {n: files_and_mtimes(sweep / n) for n in "01"} == completed  # untouched
    assert sum(e["event"] == "start" and e["job"] in "01" for e in journal(sweep)) == 2
    for n in "23":
        seen = read_json(sweep / n / "fake.json")
        assert seen["ckpt_path"] == str(sweep / n / "checkpoints" / "last.ckpt")
        assert seen["start_epoch"] >= 1 and seen["epochs_trained"] == 4 - seen["start_epoch"]
    states = final_states(sweep)  # a search's new trials are numbered after the re-queued copies
    assert len(states) == 6 and set(states.values()) == {"complete"} and set("0123") <= set(states)
    if driver == "optuna":
        states = [t.state.name for t in load_study(sweep).trials]
        assert states.count("COMPLETE") == 6 and states.count("FAIL") == 2 and len(states) == 8


@pytest.mark.slow
def test_a_killed_trial_continues_from_its_checkpoint_once(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_script(
        sweep_cmd(
            sweep, *FAKE, "sweep=optuna", "sweep.slots=2", "trainer.max_epochs=3", "+fake.epoch_s=0.05",
            "+fake.kill_at=1", "+fake.quality=0.2,0.8",  # each job SIGKILLs itself after epoch 1
        ),
        timeout=TIMEOUT_S,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    trials = load_study(sweep).trials
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]
    for trial in trials:
        if trial.state.name == "COMPLETE":  # the re-queued copy, in the killed trial's dir
            assert trial.system_attrs["failed_trial"] in (0, 1)
            assert trial.user_attrs["run_dir"] == str(trial.system_attrs["failed_trial"])
            assert trial.value == pytest.approx(trial.params["fake.quality"])
    for n in "01":
        ends = [(e["state"], e["exit_code"]) for e in journal(sweep) if e["event"] == "end" and e["job"] == n]
        assert ends == [("interrupted", 128 + signal.SIGKILL), ("complete", 0)]
        assert read_json(sweep / n / "fake.json")["start_epoch"] == 2  # from the checkpoint of epoch 1


# --- DDP inside a trial, with src/train.py ----------------------------------------------------------


@pytest.mark.slow
def test_a_ddp_trial_pruned_at_once_stops_every_rank(data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    sweep = tmp_path / "sweep"
    result = run_script(
        sweep_cmd(
            sweep, "debug=smoke", *SMOKE_DATA, f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path}/logs",
            "sweep=optuna", "sweep.n_trials=1", "seed=1,2", "trainer.devices=2", "trainer.max_epochs=3",
            # no mIoU reaches 2: the first report prunes
            "sweep.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 2.0}",
        ),
        timeout=TIMEOUT_S,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (trial,) = load_study(sweep).trials
    assert trial.state.name == "PRUNED" and list(trial.intermediate_values) == [0]
    (end,) = [e for e in journal(sweep) if e["event"] == "end"]
    assert end["state"] == "pruned" and end["exit_code"] == 0
    job = sweep / trial.user_attrs["run_dir"]
    metrics = read_json(job / "metrics.json")
    assert metrics["world_size"] == 2 and metrics["final"]["epoch"] == 0  # stopped after epoch 0 of 3
    assert (job / "checkpoints" / "last.ckpt").is_file()
    assert not processes_mentioning(str(sweep))
