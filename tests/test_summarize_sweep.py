"""scripts/summarize_sweep.py ranks a multirun's jobs; a real sweep with a failing job is summarised whole."""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from tests.conftest import SMOKE_DATA
from tests.helpers.cli import run_script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from summarize_sweep import summarize  # noqa: E402


def make_job(root: Path, name: str, overrides: list[str], metrics: dict | None) -> Path:
    """A job dir as Hydra and MetricsFile leave it."""
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


def metrics(miou: float, epoch: int, **provenance) -> dict:
    """metrics.json content with a best val/mIoU reached at `epoch`."""
    return {
        "best": {"val/mIoU": miou, "epoch": epoch},
        "final": {},
        "monitor": "val/mIoU",
        **provenance,
    }


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_jobs_ranked_by_best_miou_with_failed_jobs_listed_last(tmp_path: Path) -> None:
    results = {"0": 0.41, "1": 0.73, "3": 0.05}
    for name, miou in results.items():
        make_job(
            tmp_path,
            name,
            ["debug=smoke", f"optim.lr={miou / 10}"],
            metrics(miou, int(name) + 1, wall_time_s=12.5),
        )
    make_job(tmp_path, "2", ["debug=smoke", "optim.lr=1e30"], None)  # crashed: no metrics.json

    out = io.StringIO()
    summarize(tmp_path, console=Console(file=out, width=200))

    table = read_csv(tmp_path / "summary.csv")
    ranked = sorted(results, key=results.get, reverse=True)
    assert [row["job"] for row in table] == [*ranked, "2"]
    assert [float(row["best val/mIoU"]) for row in table[:3]] == sorted(
        results.values(), reverse=True
    )
    assert [row["best epoch"] for row in table[:3]] == [str(int(name) + 1) for name in ranked]
    assert table[-1]["state"] == "failed" and table[-1]["best val/mIoU"] == ""
    assert table[-1]["optim.lr"] == "1e30"
    # the override every job shares is not a column, but is stated once
    assert "debug" not in table[0] and "optim.lr" in table[0]
    markdown = (tmp_path / "summary.md").read_text()
    assert "`debug=smoke`" in markdown and markdown.count("\n| ") == 1 + len(table)
    assert all(row["wall time (s)"] == "12.5" for row in table[:3])
    console = " ".join(out.getvalue().split())  # the title may wrap
    assert "(4 jobs, 1 failed)" in console and console.index("0.7300") < console.index("0.4100")


def test_wall_time_falls_back_to_file_times(tmp_path: Path) -> None:
    job = make_job(tmp_path, "0", ["seed=1"], metrics(0.5, 0))  # no wall_time_s recorded
    start = 1_700_000_000
    os.utime(job / ".hydra" / "overrides.yaml", (start, start))
    os.utime(job / "metrics.json", (start + 90, start + 90))
    summarize(tmp_path, console=Console(file=io.StringIO()))
    assert read_csv(tmp_path / "summary.csv")[0]["wall time (s)"] == "90.0"


def test_cli_rejects_a_dir_without_jobs(tmp_path: Path) -> None:
    result = run_script([sys.executable, "scripts/summarize_sweep.py", str(tmp_path)])
    assert result.returncode != 0
    assert f"no job under {tmp_path}" in result.stderr


@pytest.mark.slow
def test_sweep_over_class_weights_reports_the_failing_job_and_keeps_the_others(
    data_dir: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "multirun"
    result = run_script(
        [
            sys.executable, "src/train.py", "-m", "debug=smoke", *SMOKE_DATA, f"paths.data_dir={data_dir}",
            f"paths.log_dir={tmp_path}/logs", f"hydra.sweep.dir={sweep}", "trainer.max_epochs=1",
            # the last list has 2 weights for 6 classes: that job fails, the sweep goes on
            "loss.class_weights=null,[1,1,1,1,1,2],[1,2]",
        ],
        timeout=600,
    )  # fmt: skip
    assert result.returncode != 0  # Hydra reports the failed job when the sweep ends
    assert "loss.class_weights" in result.stderr + result.stdout
    assert (sweep / "0" / "metrics.json").exists() and (sweep / "1" / "metrics.json").exists()

    summary = run_script([sys.executable, "scripts/summarize_sweep.py", str(sweep)])
    assert summary.returncode == 0, summary.stderr
    table = read_csv(sweep / "summary.csv")
    assert sorted((row["job"], row["state"]) for row in table) == [
        ("0", "complete"),
        ("1", "complete"),
        ("2", "failed"),
    ]
    assert table[-1]["loss.class_weights"] == "[1,2]"
    best = [
        json.loads((sweep / row["job"] / "metrics.json").read_text())["best"]["val/mIoU"]
        for row in table[:2]
    ]
    assert best == sorted(best, reverse=True) == [float(row["best val/mIoU"]) for row in table[:2]]


def write_journal(root: Path, events: list[dict]) -> None:
    """A sweep journal as src/sweep.py writes it (one JSON object per line)."""
    (root / "sweep_journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def test_a_runner_journal_gives_states_slots_and_wall_times(tmp_path: Path) -> None:
    from src.sweeps.journal import sweep_lock

    def start(job: str, at: float, slot: int) -> dict:
        return {"event": "start", "job": job, "time": at, "overrides": [f"optim.lr={job}e-3", "seed=1"],
                "resources": {"slot": slot, "cpu_threads": 2}}  # fmt: skip

    def end(job: str, at: float, state: str) -> dict:
        return {"event": "end", "job": job, "time": at, "state": state, "exit_code": 0}

    write_journal(tmp_path, [
        start("0", 100, 0), start("1", 100, 1), end("1", 104, "pruned"), start("2", 105, 1),
        end("0", 112.5, "complete"), start("3", 113, 0), end("2", 114, "failed"),
    ])  # fmt: skip
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "metrics.json").write_text(json.dumps(metrics(0.5, 3, final={"epoch": 3})))
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "metrics.json").write_text(json.dumps(metrics(0.3, 0, final={"epoch": 0})))

    summarize(tmp_path, console=Console(file=io.StringIO()))  # no runner holds the dir: 3 was cut off
    table = read_csv(tmp_path / "summary.csv")
    assert [(r["job"], r["state"]) for r in table] == [
        ("0", "complete"), ("1", "pruned"), ("3", "interrupted"), ("2", "failed"),
    ]  # fmt: skip
    assert [r["epochs"] for r in table[:2]] == ["4", "1"] and table[0]["wall time (s)"] == "12.5"
    assert [r["slot"] for r in table] == ["0", "1", "0", "1"] and table[0]["devices"] == "2 CPU threads"
    assert table[0]["optim.lr"] == "0e-3" and "seed" not in table[0]  # shared, stated once

    with sweep_lock(tmp_path):  # a runner holds the dir: job 3 is running
        summarize(tmp_path, console=Console(file=io.StringIO()))
    assert read_csv(tmp_path / "summary.csv")[2]["state"] == "running"
