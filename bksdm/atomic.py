"""Writing a folder so that readers see either the old complete one or the new complete one."""

from __future__ import annotations

import os
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
            replace_directory(staging, target)
        else:
            try:
                staging.rename(target)
            except OSError:
                if overwrite or not target.exists():
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_directory(source: Path, target: Path) -> None:
    """Renames the folder ``source`` to ``target``; an existing ``target`` (file or folder) is set aside
    first and removed after, so at every moment ``target`` is either the old one or the new one."""
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, retired / target.name)
        os.replace(source, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(source, target)
