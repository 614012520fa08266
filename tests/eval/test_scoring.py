"""Scoring: images resized to the scoring size, real-image statistics cached, the stand-in extractors."""

import torch
from helpers.eval_data import write_real

from bksdm.eval.extractors import StandInCLIP, StandInInception
from bksdm.eval.scoring import load_scored, real_statistics


def test_scoring_resizes_to_256_and_real_statistics_are_cached(tmp_path):
    write_real(tmp_path / "real")
    assert load_scored([tmp_path / "real" / "0.jpg"]).shape == (1, 3, 256, 256)
    extractor = StandInInception()
    stats = real_statistics(tmp_path / "real", extractor, cache_dir=tmp_path / "cache")
    cached = list((tmp_path / "cache").glob("real-standin-inception-256-*.npz"))
    assert len(cached) == 1 and stats.count == 12
    again = real_statistics(tmp_path / "real", extractor, cache_dir=tmp_path / "cache")
    torch.testing.assert_close(again.cov, stats.cov)
    assert StandInCLIP().embed_texts(["a", "a longer caption"]).shape == (2, 32)


def test_a_folder_changed_with_the_same_count_is_scored_again(tmp_path):
    """The cache key was the folder and its file count: a replaced image reused stale statistics."""
    import os

    from PIL import Image

    write_real(tmp_path / "real")
    extractor = StandInInception()
    stats = real_statistics(tmp_path / "real", extractor, cache_dir=tmp_path / "cache")
    replaced = tmp_path / "real" / "0.jpg"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(replaced)
    os.utime(replaced, ns=(1, 1))  # a different modification time even on a coarse file system clock
    again = real_statistics(tmp_path / "real", extractor, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    assert again.count == stats.count and not torch.allclose(again.mean, stats.mean)
