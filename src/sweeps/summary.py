"""One table of a sweep's jobs, best first: overrides, state, best metric and epoch, wall time, slot.

Works on any sweep dir: a `src/sweep.py` sweep (its journal gives states, wall times and slots, so
a running sweep can be summarised too) or a `python src/train.py -m` multirun (every dir below
with a `.hydra/overrides.yaml` is a job: complete if it wrote a metric, else failed). The table is
printed and written beside the sweep as `summary.csv` and `summary.md`; an Optuna search also gets
Optuna's own plots (`optuna_history.png`, `optuna_importance.png`, `optuna_intermediate.png`).
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from src.sweeps.journal import (
    COMPLETE,
    FAILED,
    INTERRUPTED,
    PRUNED,
    RUNNING,
    JobHistory,
    JobJournal,
    is_locked,
)

log = logging.getLogger(__name__)

DEFAULT_MONITOR = "val/mIoU"
MANIFEST = "sweep.json"
# Rows with a metric first (best first), then what is still going on, then what did not work.
STATE_ORDER = {COMPLETE: 0, PRUNED: 0, RUNNING: 1, INTERRUPTED: 2, FAILED: 3}


@dataclass
class JobRow:
    """One job of the sweep: where it ran, what it overrode and what it reached."""

    name: str
    overrides: dict[str, str]
    state: str = FAILED
    best: float | None = None
    best_epoch: int | None = None
    epochs: int | None = None
    wall_time_s: float | None = None
    slot: str = ""
    devices: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def parse_overrides(lines: list[str]) -> dict[str, str]:
    """`["a.b=1", "+c=x"]` -> `{"a.b": "1", "+c": "x"}` (a deletion `~k` maps to "")."""
    pairs = (line.split("=", 1) if "=" in line else (line, "") for line in lines)
    return {key: value for key, value in pairs}


def newest_mtime(directory: Path) -> float:
    """The latest modification time of any file below `directory`."""
    return max((p.stat().st_mtime for p in directory.rglob("*") if p.is_file()), default=0.0)


def read_metrics(row: JobRow, job_dir: Path) -> bool:
    """Fill the row's best metric, its epoch and the epochs trained from metrics.json; False if none."""
    try:
        summary = json.loads((job_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    best = summary.get("best") or {}
    value = best.get(summary.get("monitor", DEFAULT_MONITOR))
    if value is None:
        return False
    row.best, row.best_epoch = float(value), best.get("epoch")
    final_epoch = (summary.get("final") or {}).get("epoch")
    row.epochs = final_epoch + 1 if isinstance(final_epoch, int) else None
    if isinstance(summary.get("wall_time_s"), int | float):
        row.wall_time_s = float(summary["wall_time_s"])
    return True


def multirun_row(job_dir: Path, root: Path) -> JobRow:
    """A job of a `-m` multirun: overrides from `.hydra/`, complete when it wrote its metric."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    row = JobRow(
        job_dir.relative_to(root).as_posix(),
        parse_overrides(yaml.safe_load(overrides_file.read_text()) or []),
    )
    # metrics.json's wall time when the run recorded one; else from file times (start = overrides.yaml)
    row.wall_time_s = newest_mtime(job_dir) - overrides_file.stat().st_mtime
    if read_metrics(row, job_dir):
        row.state = COMPLETE
    return row


def journal_row(job: JobHistory, root: Path, runner_alive: bool) -> JobRow:
    """A job of a src/sweep.py sweep: state, wall time and slot from the journal."""
    row = JobRow(job.name, parse_overrides(job.overrides), state=job.state)
    if job.state == RUNNING and not runner_alive:
        row.state = INTERRUPTED  # its runner died; the next run of the command continues it
    read_metrics(row, root / job.name)
    row.wall_time_s = job.wall_time_s + (time.time() - job.started if job.started and runner_alive else 0.0)
    row.slot = str(job.resources.get("slot", ""))
    row.devices = describe_resources(job.resources)
    return row


def describe_resources(resources: dict[str, Any]) -> str:
    """`2 CPU threads`, `GPU 0,1`, or "" (a backend that places jobs itself)."""
    if resources.get("cpu_threads"):
        threads = resources["cpu_threads"]
        return f"{threads} CPU thread{'' if threads == 1 else 's'}"
    if "CUDA_VISIBLE_DEVICES" in resources:
        return f"GPU {resources['CUDA_VISIBLE_DEVICES']}"
    return ""


def find_jobs(root: Path) -> list[JobRow]:
    """Every job below `root`, best first (see STATE_ORDER)."""
    histories = JobJournal(root).histories()
    if histories:
        alive = is_locked(root)
        rows = [journal_row(job, root, alive) for job in histories.values()]
    else:
        rows = [multirun_row(p.parent.parent, root) for p in sorted(root.rglob(".hydra/overrides.yaml"))]
    return sorted(rows, key=lambda r: (STATE_ORDER.get(r.state, 9), -(r.best if r.best is not None else float("-inf")), r.name))


def split_overrides(rows: list[JobRow]) -> tuple[dict[str, str], list[str]]:
    """Overrides every job shares (with their value), and the keys that vary, in first-seen order."""
    keys = list(dict.fromkeys(key for row in rows for key in row.overrides))
    first = rows[0].overrides
    common = {
        key: first[key]
        for key in keys
        if all(key in row.overrides and row.overrides[key] == first.get(key) for row in rows)
    }
    return common, [key for key in keys if key not in common]


def compact(value: str) -> str:
    """A float override shortened to 4 significant digits for display (CSV keeps the exact text)."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if len(value) > 6 else value


def table(
    rows: list[JobRow], varying: list[str], monitor: str, exact: bool
) -> tuple[list[str], list[list[str]]]:
    """Header and one row of strings per job (`exact`: full precision, for CSV)."""
    placed = any(row.slot for row in rows)
    header = ["rank", "job", "state", *varying, f"best {monitor}", "best epoch", "epochs", "wall time (s)"]
    header += ["slot", "devices"] if placed else []
    body = []
    for rank, row in enumerate(rows, start=1):
        overrides = [row.overrides.get(key, "") for key in varying]
        best = "" if row.best is None else repr(row.best) if exact else f"{row.best:.4f}"
        cells = [
            str(rank) if row.best is not None else "-",
            row.name,
            row.state,
            *(overrides if exact else map(compact, overrides)),
            best,
            "" if row.best_epoch is None else str(row.best_epoch),
            "" if row.epochs is None else str(row.epochs),
            "" if row.wall_time_s is None else f"{row.wall_time_s:.1f}",
        ]
        body.append(cells + ([row.slot, row.devices] if placed else []))
    return header, body


def markdown(header: list[str], body: list[list[str]], common: dict[str, str]) -> str:
    """A Markdown table, with the overrides shared by all jobs on a line above it."""
    shared = " ".join(f"`{k}={v}`" if v else f"`{k}`" for k, v in common.items()) or "none"
    lines = [f"Overrides shared by all jobs: {shared}", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def read_manifest(root: Path) -> dict[str, Any]:
    """The runner's `sweep.json` (empty for a `-m` multirun)."""
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def optuna_plots(root: Path, manifest: dict[str, Any]) -> list[Path]:
    """Optuna's history, importance and intermediate-value plots of the study, as PNG beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as optuna_plot

    from src.sweeps.trial import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=manifest["study_name"], storage=open_storage(manifest["storage"]))
    plots = {
        "optuna_history.png": optuna_plot.plot_optimization_history,
        "optuna_importance.png": optuna_plot.plot_param_importances,
        "optuna_intermediate.png": optuna_plot.plot_intermediate_values,
    }
    written = []
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                axes = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as err:  # too few trials for it
                log.info("%s not drawn: %s", name, err)
                continue
        axes.figure.savefig(root / name, dpi=100, bbox_inches="tight")
        plt.close(axes.figure)
        written.append(root / name)
    return written


def summarize(root: Path, console: Console | None = None) -> list[JobRow]:
    """Print the sweep at `root` as a table; write summary.csv, summary.md (and Optuna's plots) there."""
    rows = find_jobs(root)
    if not rows:
        raise SystemExit(f"summarize_sweep: no job under {root} (expected <dir>/<job>/.hydra/overrides.yaml)")
    common, varying = split_overrides(rows)
    header, exact = table(rows, varying, DEFAULT_MONITOR, exact=True)
    with (root / "summary.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *exact])
    header, body = table(rows, varying, DEFAULT_MONITOR, exact=False)
    (root / "summary.md").write_text(markdown(header, body, common))
    manifest = read_manifest(root)
    if manifest.get("driver") == "optuna":
        optuna_plots(root, manifest)

    counts = {state: sum(r.state == state for r in rows) for state in STATE_ORDER}
    shown = ", ".join(f"{n} {state}" for state, n in counts.items() if n and state != COMPLETE)
    title = Table(title=f"{root} ({len(rows)} jobs{', ' + shown if shown else ''})")
    for name in header:
        title.add_column(name, justify="right" if name in ("rank", "best epoch", "epochs") else "left")
    for cells, row in zip(body, rows, strict=True):
        title.add_row(*cells, style="red" if row.state in (FAILED, INTERRUPTED) else None)
    # piped output (a log, CI) is not squeezed to 80 columns
    console = console or (Console() if sys.stdout.isatty() else Console(width=240))
    console.print(title)
    console.print("shared overrides: " + (" ".join(f"{k}={v}" for k, v in common.items()) or "none"))
    return rows
