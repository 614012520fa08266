"""One path for log records: through the root logger that Hydra configures (console and ``<job>.log``).

The ``lightning`` package gives its logger a console handler of its own when it is imported; imported
inside a Hydra job (as the entry points do, to compose fast), its records would then print twice, once
by that handler and once by Hydra's, while a ``lightning`` imported first would keep them out of
``train.log`` altogether.
"""

from __future__ import annotations

import logging


def route_lightning_logs() -> None:
    """Call after importing lightning: its records go to the root logger's handlers only."""
    root = logging.getLogger()
    if not root.handlers:  # no Hydra logging set up (a plain script): keep Lightning's own
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True


# What third-party code prints on every run that says nothing about the run: advertising, hints about the
# environment, deprecations inside other libraries. BKSDM_VERBOSE=1 shows them again.
NOISE_WARNINGS = (
    # Lightning on any machine where SLURM is installed, though this run was not started by srun
    r"The `srun` command is available on your system but is not used",
    # torch 2.14 deprecates a pytree check Lightning still makes
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)
NOISE_RECORDS = (
    "💡 Tip:",  # Lightning's litlogger advertisement
    "TPU available:",
    "HPU available:",
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NOISE_RECORDS)


def quiet_third_party() -> None:
    """Filters the warnings and records of ``NOISE_WARNINGS`` and ``NOISE_RECORDS``, and the loading and
    saving progress bars of diffusers and transformers (which would interleave with the training bar);
    nothing of bksdm's own. A no-op with ``BKSDM_VERBOSE=1``."""
    import os
    import warnings

    if os.environ.get("BKSDM_VERBOSE") == "1":
        return
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
