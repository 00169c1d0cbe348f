"""The resolved run config as a rich tree: printed at start and kept in the run dir as `config_tree.log`.

One branch per top-level key in the order the config was composed (the groups of conf/train.yaml's
defaults list first, then the run's own values such as `seed` and `tags`), each holding its YAML.
Hydra's own settings are left out (`.hydra/` beside the file already holds them), and so is the
sweep runner's `sweep` section, which a single run ignores.
"""

from __future__ import annotations

from pathlib import Path

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


def branch_text(value: object) -> str:
    """The YAML of a group (resolved), or the plain value of a top-level key."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_yaml(value, resolve=True)
    return "null" if value is None else str(value)


def config_tree(cfg: DictConfig) -> Tree:
    """A tree with one branch per top-level key of `cfg` (but LAUNCH_SECTIONS), in composition order."""
    tree = Tree("CONFIG", style=STYLE, guide_style=STYLE)
    for key in cfg:
        if key in LAUNCH_SECTIONS:
            continue
        branch = tree.add(str(key), style=STYLE, guide_style=STYLE)
        branch.add(Syntax(branch_text(cfg[key]), "yaml"))
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
