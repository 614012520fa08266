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
