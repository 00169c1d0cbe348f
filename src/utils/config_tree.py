"""The resolved run config as a rich tree: printed at start and kept in the run dir as `config_tree.log`.

One branch per top-level key in the order the config was composed (the groups of conf/train.yaml's
defaults list first, then the run's own values such as `seed` and `tags`), each holding its YAML.
Hydra's own settings are left out (`.hydra/` beside the file already holds them), and so is the
sweep runner's `sweep` section, which a single run ignores.

A value that a sizing preset set (conf/sizing/<data>_<model>.yaml, chosen by conf/train.yaml's
defaults list for one data/model pair) carries the preset's file as a comment,
`max_epochs: 40  # conf/sizing/synthetic_fcn8s.yaml`, so the tree says why a value differs from
its group's file. A value given on the command line or changed by a later config is not marked.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.tree import Tree

TREE_FILE = "config_tree.log"
# Top-level sections that say how runs are launched, not what a run is: Hydra's own and the sweep
# runner's (src/sweep.py). Left out of the tree, the checkpoint's config and the loggers' hparams.
LAUNCH_SECTIONS = ("hydra", "sweep")
STYLE = "dim"
# The file is read in editors and diffed between runs: wide enough that YAML lines rarely wrap.
FILE_WIDTH = 120
SIZING_GROUP = "sizing"
REPO_ROOT = Path(__file__).resolve().parents[2]
# `key: value` lines of OmegaConf.to_yaml (two-space indents; list items start with "- ")
YAML_KEY = re.compile(r"^(?P<indent> *)(?P<key>[^\s#-][^:]*|'[^']*'|\"[^\"]*\"):(?: |$)")

Marks = dict[tuple[str, ...], str]


def leaf_paths(node: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """{(key, subkey, ...): value} of every non-mapping value in a plain nested dict."""
    if not isinstance(node, dict):
        return {prefix: node}
    found: dict[tuple[str, ...], Any] = {}
    for key, value in node.items():
        found.update(leaf_paths(value, (*prefix, str(key))))
    return found


def _sizing_file(name: str) -> Path | None:
    """conf/sizing/<name>.yaml in the first file config source that holds it."""
    sources = [Path(s["path"]) for s in HydraConfig.get().runtime.config_sources if s["schema"] == "file"]
    for folder in [*sources, REPO_ROOT / "conf"]:
        candidate = folder / SIZING_GROUP / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    return None


def _command_line_keys() -> set[tuple[str, ...]]:
    """The keys the command line set (`a.b=1`, `+a.b=1`, `++a.b=1`), as paths."""
    keys = set()
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        keys.add(tuple(key.split(".")))
    return keys


def _shown_name(path: Path) -> str:
    """The file as a reader of the repository names it (conf/sizing/...), else its full path."""
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def sizing_marks(cfg: DictConfig) -> Marks:
    """{path: "conf/sizing/<name>.yaml"} for each value of `cfg` that the chosen sizing preset set."""
    if not HydraConfig.initialized():
        return {}
    name = HydraConfig.get().runtime.choices.get(SIZING_GROUP)
    path = _sizing_file(name) if name else None
    if path is None:
        return {}
    preset = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    given = _command_line_keys()
    marks = {}
    for key, value in leaf_paths(preset).items():
        if key in given:
            continue
        current = OmegaConf.select(cfg, ".".join(key), default=None, throw_on_missing=False)
        if isinstance(current, DictConfig | ListConfig):
            current = OmegaConf.to_container(current, resolve=True)
        if current == value:
            marks[key] = _shown_name(path)
    return marks


def annotate_yaml(text: str, marks: Marks) -> str:
    """`text` (OmegaConf YAML) with `  # <source>` after each `key:` line whose path is in `marks`."""
    if not marks:
        return text
    lines, stack = [], []  # stack: (indent, key) of the mappings enclosing the current line
    for line in text.splitlines():
        match = YAML_KEY.match(line)
        if match is not None:
            indent, key = len(match["indent"]), match["key"].strip("'\"")
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, key))
            source = marks.get(tuple(k for _, k in stack))
            if source is not None:
                line = f"{line}  # {source}"
        lines.append(line)
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


def branch_text(value: object, marks: Marks | None = None) -> str:
    """The YAML of a group (resolved, with `marks` as comments), or the plain value of a top-level key."""
    if isinstance(value, DictConfig | ListConfig):
        return annotate_yaml(OmegaConf.to_yaml(value, resolve=True), marks or {})
    text = "null" if value is None else str(value)
    source = (marks or {}).get(())
    return text if source is None else f"{text}  # {source}"


def config_tree(cfg: DictConfig) -> Tree:
    """A tree with one branch per top-level key of `cfg` (but LAUNCH_SECTIONS), in composition order."""
    marks = sizing_marks(cfg)
    tree = Tree("CONFIG", style=STYLE, guide_style=STYLE)
    for key in cfg:
        if key in LAUNCH_SECTIONS:
            continue
        here = {path[1:]: source for path, source in marks.items() if path[0] == key}
        branch = tree.add(str(key), style=STYLE, guide_style=STYLE)
        branch.add(Syntax(branch_text(cfg[key], here), "yaml"))
    return tree


@rank_zero_only
def print_config_tree(cfg: DictConfig, save_to: Path | None = None) -> None:
    """Print the config tree to the terminal and, if `save_to` is given, write it there (rank 0 only)."""
    tree = config_tree(cfg)
    Console().print(tree)
    if save_to is None:
        return
    console = Console(width=FILE_WIDTH, color_system=None)
    with console.capture() as captured:
        console.print(tree)
    # rich pads every line to the width; the file keeps only the text
    lines = [line.rstrip() for line in captured.get().splitlines()]
    save_to.parent.mkdir(parents=True, exist_ok=True)
    save_to.write_text("\n".join(lines) + "\n", encoding="utf-8")
