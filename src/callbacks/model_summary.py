"""Lightning callback: the model summary at the start of fit, without the columns that say nothing.

Lightning's summary has a FLOPs column that holds 0 in every row unless the module defines an
`example_input_array` (seglab logs its own parameter and FLOP count, src/models/complexity.py, at
the training crop size, just before). Columns whose every value is empty or zero are left out.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.utilities.model_summary.model_summary import (
    get_formatted_model_size,
    get_human_readable_count,
)

# What an uninformative cell holds: Lightning's "0" count, nothing, or "n/a" (no example input).
EMPTY_CELLS = frozenset({"0", "", "n/a", "?"})


def informative_columns(summary_data: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """The summary's columns minus those whose every cell is empty or zero (the index column is kept)."""
    return [
        (name, values)
        for name, values in summary_data
        if name == " " or not all(str(value).strip() in EMPTY_CELLS for value in values)
    ]


class ModelSummary(RichModelSummary):
    """RichModelSummary without all-zero columns and without a zero `Total FLOPs` line."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        """Print the table and the totals with rich, as Lightning's RichModelSummary does."""
        from rich import get_console
        from rich.table import Table

        columns = informative_columns(summary_data)
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            numeric = name not in (" ", "Name", "Type", "Mode")
            table.add_column(name, justify="right" if numeric else "left", style="dim" if name == " " else None)
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*(str(cell) for cell in row))
        console = get_console()
        console.print(table)
        totals = [
            ("Trainable params", get_human_readable_count(int(trainable_parameters))),
            ("Non-trainable params", get_human_readable_count(int(total_parameters - trainable_parameters))),
            ("Total params", get_human_readable_count(int(total_parameters))),
            ("Total estimated model params size (MB)", get_formatted_model_size(model_size)),
            ("Modules in train mode", str(total_training_modes["train"])),
            ("Modules in eval mode", str(total_training_modes["eval"])),
        ]
        if total_flops:
            totals.append(("Total FLOPs", get_human_readable_count(int(total_flops))))
        grid = Table.grid(expand=True)
        grid.add_column()
        for label, value in totals:
            grid.add_row(f"[bold]{label}[/]: {value}")
        console.print(grid)
