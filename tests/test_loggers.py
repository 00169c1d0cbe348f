"""Every logger a user picks with `logger=...` gets seglab's metrics, the run's config, its tags and images."""

from __future__ import annotations

from pathlib import Path

from src.train import train
from src.utils.config_tree import TREE_FILE


def test_config_tree_is_saved_beside_hydra_dir(smoke_cfg) -> None:
    cfg = smoke_cfg("tags=[smoke,tree]", "trainer.max_epochs=1")
    train(cfg)
    text = (Path(cfg.paths.output_dir) / TREE_FILE).read_text(encoding="utf-8")
    branches = [line.split(" ", 1)[1] for line in text.splitlines() if line.startswith(("├── ", "└── "))]
    assert branches[:9] == ["data", "model", "loss", "optim", "module", "trainer", "callbacks", "logger", "paths"]
    assert "hydra" not in branches and {"tags", "seed", "task_name"} <= set(branches)
    # each group's YAML, resolved: keys of its config and the run's own paths
    for line in ("backbone:", "max_epochs: 1", "tensorboard:", f"output_dir: {cfg.paths.output_dir}", "- tree"):
        assert line in text, line
