"""Glue between the config and a run: building its parts (build, loss_config), checkpoints, DDP,
errors and atomic files, the console (config tree, Lightning's notices, the closing lines), and
the Hydra callbacks that guard run dirs and sweep storage."""
