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
