"""Files written so that a crash or a parallel reader never sees half of one, and tensor files read so that none runs code."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

from src.utils.errors import UserError


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


def load_tensor_file(path: str | Path, key: str = "ckpt_path", map_location: Any = "cpu") -> Any:
    """torch.load(weights_only=True) of `path`; a missing, unsafe or unreadable file raises UserError naming `key`."""
    import torch  # here: writing JSON (sweep runners, fake jobs) must not pay torch's import

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{key}={path} does not exist; expected a checkpoint or state-dict file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        what = f" (it references {found.group(1)})" if found else ""
        raise UserError(
            f"checkpoint {path} needs arbitrary unpickling{what} and was refused: seglab loads checkpoints with "
            "torch.load(weights_only=True), so only tensors and primitive values are accepted and no code in "
            "the file runs. Re-save it from a trusted environment with tensors and plain hyper-parameters only."
        ) from None
    except Exception as err:  # truncated or foreign bytes fail anywhere inside torch's unpickler
        detail = str(err).splitlines()[0] if str(err) else ""
        raise UserError(f"checkpoint {path} cannot be read ({type(err).__name__}: {detail})") from None
