"""Writing files so that a crash or a parallel reader never sees half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> None:
    """Write JSON via a temp file in the same folder and rename: readers see the old or the new file.

    The temp name carries the process id, so parallel sweep jobs writing one file never share it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
