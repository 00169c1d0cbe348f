"""The printed config tree says which values a sizing preset changed, and where they come from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from src.utils.config_tree import annotate_yaml, config_tree, leaf_paths
from tests.conftest import ROOT, compose_config

SIZING = "conf/sizing/synthetic_fcn8s.yaml"


def tree_text(*overrides: str, tmp_path: Path) -> str:
    """The config tree of `python src/train.py <overrides>` as it is printed (no colours)."""
    cfg = compose_config("train", list(overrides), tmp_path)
    console = Console(width=160, color_system=None)
    with console.capture() as captured:
        console.print(config_tree(cfg))
    return captured.get()


def marked(text: str) -> dict[str, str]:
    """{`key: value`: source} of every line the tree marks with a config file."""
    found = {}
    for line in text.splitlines():
        body = line.strip("│├└─ ").rstrip()
        if "  # " in body:
            value, source = body.split("  # ", 1)
            found[value] = source
    return found


def test_the_default_run_marks_every_value_its_sizing_sets(tmp_path: Path) -> None:
    # what the sizing file sets, read independently of the code under test
    preset = yaml.safe_load((ROOT / SIZING).read_text())
    assert preset == {
        "model": {"backbone": {"width": 0.125}},
        "module": {"channels_last": True},
        "optim": {"lr": 4.0e-3},
        "trainer": {"max_epochs": 40},
    }
    assert marked(tree_text(tmp_path=tmp_path)) == {
        "width: 0.125": SIZING,
        "channels_last: true": SIZING,
        "lr: 0.004": SIZING,
        "max_epochs: 40": SIZING,
    }


def test_values_set_later_are_not_marked(tmp_path: Path) -> None:
    # debug=smoke sets width and max_epochs after the sizing; the command line sets lr (to the same
    # value: it is the user's now)
    text = tree_text("debug=smoke", "optim.lr=4e-3", tmp_path=tmp_path)
    assert marked(text) == {"channels_last: true": SIZING}
    assert re.search(r"max_epochs: 2\s*$", text, re.MULTILINE)


@pytest.mark.parametrize("overrides", [["data=voc2012"], ["~sizing"]])
def test_runs_without_a_sizing_mark_nothing(overrides: list[str], tmp_path: Path) -> None:
    text = tree_text(*overrides, tmp_path=tmp_path)
    assert marked(text) == {}
    assert re.search(r"max_epochs: 30\s*$", text, re.MULTILINE) and re.search(r"lr: 0.002\s*$", text, re.MULTILINE)


def test_annotate_yaml_finds_nested_keys_and_leaves_lists_alone() -> None:
    text = "a:\n  b:\n    c: 1\n  d:\n  - 1\n  - 2\nc: 3\n"
    marks = {("a", "b", "c"): "x.yaml", ("a", "d"): "y.yaml", ("c",): "z.yaml"}
    assert annotate_yaml(text, marks) == (
        "a:\n  b:\n    c: 1  # x.yaml\n  d:  # y.yaml\n  - 1\n  - 2\nc: 3  # z.yaml\n"
    )
    assert leaf_paths({"a": {"b": 1, "c": [1]}}) == {("a", "b"): 1, ("a", "c"): [1]}
