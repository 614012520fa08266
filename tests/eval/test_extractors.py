"""The offline stand-in extractors: their FID separates noise and flat images from real ones, as
Inception's does, so that tests built on them can catch a broken metric."""

import numpy as np
import torch
from PIL import Image

from bksdm.eval.extractors import StandInInception
from bksdm.eval.metrics import FeatureStats, frechet_distance, inception_score


def photo_like(rng, count):
    """Smooth, varied colour images (bicubic upsampling of coarse random ones), as scored: 256 px uint8."""
    images = [
        np.asarray(
            Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).resize((256, 256), Image.BICUBIC)
        )
        for _ in range(count)
    ]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def test_standin_fid_separates_noise_and_flat_images_from_real_ones():
    rng = np.random.default_rng(0)
    extractor = StandInInception()
    stats = {
        name: FeatureStats.of(extractor(images)[0].double())
        for name, images in {
            "real": photo_like(rng, 20),
            "real split": photo_like(rng, 20),
            "noise": torch.from_numpy(rng.integers(0, 255, (20, 3, 256, 256), dtype=np.uint8)),
            "flat": torch.from_numpy(
                np.repeat(rng.integers(0, 255, (20, 3, 1, 1), dtype=np.uint8), 256, 2).repeat(256, 3)
            ),
        }.items()
    }
    same = frechet_distance(stats["real"], stats["real split"])
    assert 0 < same < 1
    assert frechet_distance(stats["noise"], stats["real"]) > 100 * same
    assert frechet_distance(stats["flat"], stats["real"]) > 100 * same


def test_standin_inception_score_is_above_one_for_varied_images():
    _, logits = StandInInception()(photo_like(np.random.default_rng(1), 20))
    mean, _ = inception_score(logits.double(), splits=2)
    assert 1.05 < mean < 10
