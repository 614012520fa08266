"""Writing a folder (or a file) so that readers see either the old complete one or the new complete one."""

from __future__ import annotations

import os
import secrets
import shutil
import stat
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
    staging = _make_staging_folder(target.parent, f".{target.name}.partial-")
    try:
        yield staging
        _open_up_files(staging)
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


def _make_staging_folder(parent: Path, prefix: str) -> Path:
    """A new, uniquely named folder in ``parent``, created as a plain ``mkdir`` would create it.

    Not ``tempfile.mkdtemp``: its folders are mode 0700, and the staging folder is what gets published,
    so every export would come out private. ``os.mkdir`` applies the umask (and any default ACL) as for
    any other folder, with no need to read the umask (which cannot be done thread-safely).
    """
    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path


def _open_up_files(folder: Path) -> None:
    """Give every file under ``folder`` at least the permissions a plain ``open`` gives under the current
    umask: some writers make theirs private (safetensors writes 0600), and a published export is meant to
    be read by the teammates the umask lets read it. The mode is read off a probe file, since reading the
    umask itself cannot be done thread-safely."""
    probe = folder / f".mode-probe-{secrets.token_hex(4)}"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = stat.S_IMODE(probe.stat().st_mode)
    probe.unlink()
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            current = stat.S_IMODE(os.lstat(path).st_mode)
            if current | mode != current:
                os.chmod(path, current | mode)


def write_file_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old file or the whole new one: written
    under a temporary name beside it, flushed to disk, then renamed over it. The file gets the mode a
    plain ``open`` would give (``tempfile.mkstemp``'s are 0600)."""
    path = Path(path)
    while True:
        staging = path.with_name(f".{path.name}.partial-{secrets.token_hex(4)}")
        try:
            descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        break
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


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
