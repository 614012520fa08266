"""Writing a folder so that readers see either the old complete one or the new complete one."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(target: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a staging folder beside ``target``; on success it becomes ``target`` by a rename.

    An exception inside the block (or a kill) leaves ``target`` as it was. With ``overwrite=False`` an
    existing ``target`` wins (another process finished first) and the staged copy is dropped.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
        if target.exists():
            if not overwrite:
                return
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            target.rename(retired / target.name)
            staging.rename(target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            try:
                staging.rename(target)
            except OSError:
                if overwrite or not target.exists():
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
