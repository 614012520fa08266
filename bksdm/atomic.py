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
            sync_tree(staging)
            try:
                staging.rename(target)
                _sync_folder(target.parent)
            except OSError:
                if overwrite or not target.exists():
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_directory(source: Path, target: Path) -> None:
    """Renames the folder ``source`` to ``target``; an existing ``target`` (file or folder) is set aside
    first and removed after, so at every moment ``target`` is either the old one or the new one. ``source``
    reaches the disk before the rename that publishes it."""
    sync_tree(source)
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, retired / target.name)
        os.replace(source, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(source, target)
    _sync_folder(target.parent)


def sync_tree(folder: Path) -> None:
    """Flush every file under ``folder``, and the folders' entries, to disk: without it a power loss
    soon after a rename can publish a folder whose files were never written."""
    for root, _, files in os.walk(folder):
        for name in files:
            descriptor = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        _sync_folder(root)


def _sync_folder(path: str | Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # folders cannot be opened on some systems (Windows): their entries are not synced
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
