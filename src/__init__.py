"""seglab: semantic segmentation experiments with PyTorch Lightning and Hydra."""

import os
from pathlib import Path

# conf/paths/default.yaml reads this, so runs and data land in the repository whatever the cwd.
os.environ.setdefault("SEGLAB_ROOT", str(Path(__file__).resolve().parent.parent))

# `${seglab.required:...}` in the configs (src/utils/resolvers.py) resolves wherever `src` is imported.
from src.utils.resolvers import register_resolvers  # noqa: E402

register_resolvers()
