"""Published folders and files: whole or not at all, with the permissions a plain mkdir or open gives."""

import os
import stat
from contextlib import contextmanager

import pytest

from bksdm.training.atomic import atomic_directory, write_file_atomically


@contextmanager
def umask(mask):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "folder_mode"), [(0o022, 0o755), (0o027, 0o750)])
def test_a_published_folder_has_the_mode_of_a_plain_mkdir(tmp_path, mask, folder_mode):
    with umask(mask):
        for version in ("new", "replacing"):  # a fresh folder, then one replacing it
            with atomic_directory(tmp_path / "student") as staging:
                (staging / "unet").mkdir()
                (staging / "unet" / "config.json").write_text(version)
            assert mode(tmp_path / "student") == folder_mode, version
            assert mode(tmp_path / "student" / "unet") == folder_mode
        with atomic_directory(tmp_path / "other", overwrite=False) as staging:
            (staging / "file").write_text("x")
    assert mode(tmp_path / "other") == folder_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "student"]  # no staging folder left


def test_a_file_written_atomically_is_whole_and_has_the_mode_of_a_plain_open(tmp_path, monkeypatch):
    target = tmp_path / "manifest.json"
    with umask(0o022):
        write_file_atomically(target, "old")
    assert target.read_text() == "old" and mode(target) == 0o644

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        write_file_atomically(target, "new")
    assert target.read_text() == "old"  # the old one, whole
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary file left


def test_published_folders_reach_the_disk_before_the_rename_that_publishes_them(tmp_path, monkeypatch):
    from bksdm.training.atomic import atomic_directory

    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: events.append(("sync", os.readlink(f"/proc/self/fd/{fd}"))) or fsync(fd)
    )
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(b))) or replace(a, b))
    for version in ("old", "new"):  # a fresh folder, then one replacing it
        events.clear()
        with atomic_directory(tmp_path / "student") as staging:
            (staging / "unet").mkdir()
            (staging / "unet" / "weights.bin").write_text(version)
        names = [os.path.basename(path) for _, path in events]
        first_replace = next((i for i, (kind, _) in enumerate(events) if kind == "replace"), len(events))
        assert names.index("weights.bin") < first_replace and names.index("unet") < first_replace, events
        assert events[-1] == ("sync", str(tmp_path)), events  # the renamed entry itself
    assert (tmp_path / "student" / "unet" / "weights.bin").read_text() == "new"
