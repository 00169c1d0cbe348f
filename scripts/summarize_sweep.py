"""Rank the jobs of a Hydra multirun by their best validation mIoU.

    python scripts/summarize_sweep.py <multirun dir>

Every directory below <multirun dir> with a `.hydra/overrides.yaml` is a job (so an Optuna
study dir with one sweep dir per invocation works too). Prints one row per job (the overrides
that differ between jobs, best val/mIoU, the epoch of the best, wall time), best first, and
writes the same table to <multirun dir>/summary.csv and summary.md. A job without metrics.json
(it failed or was interrupted) is listed as failed, after the others.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

DEFAULT_MONITOR = "val/mIoU"


@dataclass
class Job:
    """One job of the sweep: where it ran, what it overrode and what it reached."""

    name: str
    overrides: dict[str, str]
    status: str = "failed"
    best: float | None = None
    best_epoch: int | None = None
    wall_time_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def parse_overrides(lines: list[str]) -> dict[str, str]:
    """`["a.b=1", "+c=x"]` -> `{"a.b": "1", "+c": "x"}` (a deletion `~k` maps to "")."""
    pairs = (line.split("=", 1) if "=" in line else (line, "") for line in lines)
    return {key: value for key, value in pairs}


def newest_mtime(directory: Path) -> float:
    """The latest modification time of any file below `directory`."""
    return max((p.stat().st_mtime for p in directory.rglob("*") if p.is_file()), default=0.0)


def read_job(job_dir: Path, root: Path) -> Job:
    """A job's overrides, and its best metric, epoch and wall time if it wrote metrics.json."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    job = Job(
        job_dir.relative_to(root).as_posix(),
        parse_overrides(yaml.safe_load(overrides_file.read_text()) or []),
    )
    # metrics.json's wall time when the run recorded one; else from file times (start = overrides.yaml)
    job.wall_time_s = newest_mtime(job_dir) - overrides_file.stat().st_mtime
    try:
        summary = json.loads((job_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return job
    best = summary.get("best") or {}
    value = best.get(summary.get("monitor", DEFAULT_MONITOR))
    if value is None:
        return job
    job.status, job.best, job.best_epoch = "ok", float(value), best.get("epoch")
    if isinstance(summary.get("wall_time_s"), int | float):
        job.wall_time_s = float(summary["wall_time_s"])
    return job


def find_jobs(root: Path) -> list[Job]:
    """Every job below `root`: finished ones by best metric (highest first), then the failed ones."""
    jobs = [read_job(p.parent.parent, root) for p in sorted(root.rglob(".hydra/overrides.yaml"))]
    return sorted(jobs, key=lambda job: (job.status != "ok", -(job.best or 0.0), job.name))


def split_overrides(jobs: list[Job]) -> tuple[dict[str, str], list[str]]:
    """Overrides every job shares (with their value), and the keys that vary, in first-seen order."""
    keys = list(dict.fromkeys(key for job in jobs for key in job.overrides))
    common = {
        key: jobs[0].overrides[key]
        for key in keys
        if all(
            key in job.overrides and job.overrides[key] == jobs[0].overrides[key] for job in jobs
        )
    }
    return common, [key for key in keys if key not in common]


def compact(value: str) -> str:
    """A float override shortened to 4 significant digits for display (CSV keeps the exact text)."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if len(value) > 6 else value


def rows(
    jobs: list[Job], varying: list[str], monitor: str, exact: bool
) -> tuple[list[str], list[list[str]]]:
    """The table: header and one row of strings per job (`exact`: full precision, for CSV)."""
    header = ["rank", "job", "status", *varying, f"best {monitor}", "best epoch", "wall time (s)"]
    body = []
    for rank, job in enumerate(jobs, start=1):
        overrides = (job.overrides.get(key, "") for key in varying)
        best = "" if job.best is None else repr(job.best) if exact else f"{job.best:.4f}"
        body.append([
            str(rank) if job.status == "ok" else "-",
            job.name,
            job.status,
            *(overrides if exact else map(compact, overrides)),
            best,
            str(job.best_epoch) if job.best_epoch is not None else "",
            f"{job.wall_time_s:.1f}" if job.wall_time_s is not None else "",
        ])  # fmt: skip
    return header, body


def markdown(header: list[str], body: list[list[str]], common: dict[str, str]) -> str:
    """A Markdown table, with the overrides shared by all jobs on a line above it."""
    shared = " ".join(f"`{k}={v}`" if v else f"`{k}`" for k, v in common.items()) or "none"
    lines = [f"Overrides shared by all jobs: {shared}", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def summarize(root: Path, console: Console | None = None) -> list[Job]:
    """Print the ranking of the multirun at `root` and write summary.csv and summary.md there."""
    jobs = find_jobs(root)
    if not jobs:
        raise SystemExit(
            f"summarize_sweep: no job under {root} (expected <dir>/<job>/.hydra/overrides.yaml)"
        )
    common, varying = split_overrides(jobs)
    header, exact = rows(jobs, varying, DEFAULT_MONITOR, exact=True)
    with (root / "summary.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *exact])
    header, body = rows(jobs, varying, DEFAULT_MONITOR, exact=False)
    (root / "summary.md").write_text(markdown(header, body, common))

    table = Table(title=f"{root} ({len(jobs)} jobs, {sum(j.status != 'ok' for j in jobs)} failed)")
    for name in header:
        table.add_column(name, justify="right" if name in ("rank", "best epoch") else "left")
    for row, job in zip(body, jobs, strict=True):
        table.add_row(*row, style=None if job.status == "ok" else "red")
    # piped output (a log, CI) is not squeezed to 80 columns
    console = console or (Console() if sys.stdout.isatty() else Console(width=240))
    console.print(table)
    console.print(
        "shared overrides: " + (" ".join(f"{k}={v}" for k, v in common.items()) or "none")
    )
    return jobs


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "multirun_dir", type=Path, help="a Hydra multirun (or Optuna study) directory"
    )
    args = parser.parse_args(argv)
    if not args.multirun_dir.is_dir():
        raise SystemExit(f"summarize_sweep: {args.multirun_dir} is not a directory")
    summarize(args.multirun_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
