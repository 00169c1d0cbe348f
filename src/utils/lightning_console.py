"""Lightning's start-up notices that a seglab user cannot act on, silenced one by one at their source.

Each filter matches one message from one Lightning module, so every other warning still shows.
`quiet_lightning_notices` runs before seglab builds a Trainer (src/utils/build.py); a test
(tests/test_console.py) runs the smoke command and fails if any of these lines comes back, as it
would when an upgrade changes a message's wording.
"""

from __future__ import annotations

import logging
import os
import warnings

# Lightning logs its hints through these loggers (whichever of the two `rank_zero_info` is bound to).
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
# Printed by every Trainer whose loggers do not include LitLogger: an advertisement for a hosted
# service, not advice about this run (seglab's loggers are chosen with `logger=`).
LITLOGGER_TIP = "💡 Tip: For seamless cloud logging"


class DropMessage(logging.Filter):
    """Drop log records whose message starts with one given text."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record but the one this filter names."""
        return not record.getMessage().startswith(self.prefix)


def _drop_litlogger_tip() -> None:
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessage) and f.prefix == LITLOGGER_TIP for f in logger.filters):
            logger.addFilter(DropMessage(LITLOGGER_TIP))


def quiet_lightning_notices() -> None:
    """Install the filters below (idempotent: warnings.filterwarnings replaces an identical filter)."""
    _drop_litlogger_tip()
    # Lightning 2.6's CombinedLoader builds torch's deprecated `LeafSpec` in every fit; the
    # FutureWarning is addressed to Lightning's code, which a user does not change.
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    # Lightning warns whenever an `srun` binary is on PATH and the process was not started by it,
    # i.e. on every SLURM login node. seglab's SLURM launcher (conf/hydra/launcher/slurm_ddp.yaml,
    # submitit) starts its tasks with srun; a run outside any allocation is simply a local run. Inside an allocation
    # (SLURM_JOB_ID set) forgetting srun is a real mistake, so the warning stays there.
    if "SLURM_JOB_ID" not in os.environ:
        warnings.filterwarnings(
            "ignore",
            message=r"The `srun` command is available on your system but is not used",
            module=r"lightning\.fabric\.plugins\.environments\.slurm",
        )
