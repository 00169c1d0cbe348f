"""Figures measured one item at a time under a time budget, each printed and saved as it comes.

A run on a time-limited machine can be cut short (a timeout, a preempted job), so every figure is
printed at once, appended to a .log beside the JSON, and the JSON is rewritten after each item.
An item that would run past the budget is skipped and listed; one that fails is listed with its
error and the run goes on: one missing figure must not lose the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from src.utils.files import write_json_atomic


class BudgetedReport:
    """Sections of measured items in `data`, plus `skipped` and `errors`, written to `out`."""

    def __init__(
        self, out: Path, budget_s: float, sections: list[str], meta: dict[str, Any]
    ) -> None:
        self.out, self.log, self.budget_s = out, out.with_suffix(".log"), budget_s
        self.started = time.perf_counter()
        self.last_cost: dict[str, float] = {}
        self.data: dict[str, Any] = {"meta": meta, **{name: {} for name in sections}}
        self.data.update(skipped=[], errors=[], item_seconds={})  # the last: to plan the next run
        out.parent.mkdir(parents=True, exist_ok=True)
        self.log.write_text("")

    def say(self, line: str) -> None:
        """Print a line now (a timeout keeps what was printed) and log it."""
        print(line, flush=True)
        with self.log.open("a") as log:
            log.write(line + "\n")

    def elapsed(self) -> float:
        """Seconds since the report was started."""
        return time.perf_counter() - self.started

    def save(self) -> None:
        """Rewrite the JSON with everything measured so far."""
        self.data["meta"]["elapsed_s"] = round(self.elapsed(), 1)
        write_json_atomic(self.out, self.data)

    def item(
        self, section: str, key: tuple[str, ...], measure: Callable[[], Any], extra_s: float = 0.0
    ) -> Any:
        """`measure()` stored under data[section][key...] and saved; None if skipped or failed.

        An item is expected to cost what the previous item of its section did, plus `extra_s`
        (a compile warm-up, say); it is skipped when that would overrun the budget.
        """
        name = f"{section} {' / '.join(key)}"
        expected = self.last_cost.get(section, 0.0) + extra_s
        if self.elapsed() + expected > self.budget_s:
            used = f"{self.elapsed():.0f} of {self.budget_s:.0f} s used, ~{expected:.0f} s more expected"
            return self.note("skipped", name, f"time budget ({used})")
        start = time.perf_counter()
        try:
            result = measure()
        except Exception as err:  # noqa: BLE001 (say inductor without a C compiler on the machine)
            return self.note(
                "errors", name, f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
            )
        finally:
            self.last_cost[section] = time.perf_counter() - start
            self.data["item_seconds"][name] = round(self.last_cost[section], 2)
        node = self.data[section]
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = result
        self.save()
        return result

    def note(self, kind: str, name: str, why: str) -> None:
        """List `name` under `kind` (skipped | errors) with the reason, print it and save."""
        self.data[kind].append({"item": name, "why": why})
        self.say(f"{name}: {'error' if kind == 'errors' else 'skipped'}: {why}")
        self.save()

    def add_ratio(
        self, section: str, group: str, name: str, over: tuple[str, str], field: str
    ) -> None:
        """Store and print group[over[0]][field] / group[over[1]][field] once both were measured."""
        rows = self.data[section].get(group, {})
        if over[0] in rows and over[1] in rows:
            rows[name] = rows[over[0]][field] / rows[over[1]][field]
            self.say(f"{section:<5} | {group:<36} | {name} = {rows[name]:.3f}")
            self.save()


def reset_peak(device: torch.device) -> None:
    """Start a fresh peak-memory reading on a GPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """Peak GPU memory allocated since reset_peak, GiB (None on the CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def gib(value: float | None) -> str:
    """'12.34 GiB', or 'n/a' where there is no GPU memory to read."""
    return "n/a" if value is None else f"{value:.2f} GiB"
