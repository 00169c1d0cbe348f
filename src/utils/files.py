"""Writing files so that a crash or a parallel reader never sees half of one."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> None:
    """Write JSON via a temp file in the same folder and rename: readers see the old or the new file.

    The temp name carries the process id, so parallel sweep jobs writing one file never share it.
    A failed write (no space, no permission) removes the temp file and raises the OSError.
    """
    path = Path(path)
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"  # a payload JSON refuses fails before any file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        # a full disk fails the write after the empty temp file exists: leave no debris behind
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
