"""The scores as torchmetrics Metrics (bksdm.eval.metric_states): batch by batch, across ranks, and equal to
the functions of bksdm.eval.metrics and to the reference libraries."""

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from helpers.gloo import gloo_group
from torch import nn

from bksdm.eval.extractors import StandInInception
from bksdm.eval.metric_states import FID, CLIPScore, InceptionScore
from bksdm.eval.metrics import FeatureStats, clip_score, frechet_distance, inception_score


def features(seed: int, count: int = 40, width: int = 6, shift: float = 0.0) -> torch.Tensor:
    return (
        torch.randn(count, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift
    )


def fid_metric(width: int = 6) -> FID:
    return FID(nn.Identity(), num_features=width)


def test_fid_by_batches_equals_the_frechet_distance_of_all_features_and_keeps_the_real_side():
    real, fake = features(0), features(1, shift=0.5)
    metric = fid_metric()
    for part in real.split(7):
        metric.update(features=part, real=True)
    for part in fake.split(9):
        metric.update(features=part, real=False)
    expected = frechet_distance(FeatureStats.of(real), FeatureStats.of(fake))
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-12)
    stats = metric.statistics(real=True)
    torch.testing.assert_close(stats.cov, torch.cov(real.T), rtol=1e-12, atol=1e-12)

    metric.reset()  # an evaluation later in training: new generated images, the same real statistics
    other = features(2, shift=1.0)
    metric.update(features=other, real=False)
    assert float(metric.compute()) == pytest.approx(
        frechet_distance(FeatureStats.of(real), FeatureStats.of(other)), rel=1e-12
    )


def test_loaded_real_statistics_are_the_real_features_they_came_from():
    real, fake = features(0), features(1, shift=0.5)
    fed, loaded = fid_metric(), fid_metric()
    fed.update(features=real, real=True)
    loaded.load_real(FeatureStats.of(real))
    for metric in (fed, loaded):
        metric.update(features=fake, real=False)
    assert float(loaded.compute()) == pytest.approx(float(fed.compute()), rel=1e-12)
    loaded.reset()
    assert int(loaded.real_features_num_samples) == len(real) and int(loaded.fake_features_num_samples) == 0


def test_fid_takes_images_through_its_extractor():
    extractor = StandInInception()
    images = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8)
    by_images, by_features = FID(extractor, num_features=64), FID(extractor, num_features=64)
    by_images.update(images[:3], real=True)
    by_images.update(images[3:], real=False)
    by_features.update(features=extractor(images[:3])[0], real=True)
    by_features.update(features=extractor(images[3:])[0], real=False)
    assert float(by_images.compute()) == pytest.approx(float(by_features.compute()), rel=1e-12)


def test_fid_equals_pytorch_fids_frechet_distance():
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    real, fake = features(0, count=80, width=8), features(1, count=50, width=8, shift=0.3) * 1.2
    metric = fid_metric(8)
    metric.update(features=real, real=True)
    metric.update(features=fake, real=False)
    a, b = np.asarray(real), np.asarray(fake)
    expected = fid_score.calculate_frechet_distance(
        a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    )
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-6)


def test_inception_score_puts_images_back_in_prompt_order_before_torch_fidelitys_shuffle():
    logits = features(3, count=30, width=5) * 3
    metric = InceptionScore(splits=3)
    order = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    for part in order.split(8):  # the images of several ranks arrive interleaved
        metric.update(logits[part], part)
    mean, std = metric.compute()
    assert (float(mean), float(std)) == pytest.approx(inception_score(logits, splits=3), rel=1e-12)


def test_clip_score_is_the_mean_raw_cosine():
    images, texts = features(4), features(5)
    metric = CLIPScore()
    for i, t in zip(images.split(11), texts.split(11), strict=True):
        metric.update(i, t)
    assert float(metric.compute()) == pytest.approx(clip_score(images, texts), rel=1e-12)
    with pytest.raises(ValueError, match=r"\(3, 6\) image and \(2, 6\) text embeddings"):
        metric.update(images[:3], texts[:2])


def _two_ranks(rank: int, init_file: str, results) -> None:
    with gloo_group(rank, init_file):
        fid, score, clip = fid_metric(), InceptionScore(splits=4), CLIPScore()
        mine = torch.arange(rank, 40, 2)  # the prompts of this rank, as evaluation splits them
        fid.load_real(FeatureStats.of(features(0)))
        fid.update(features=features(1, shift=0.5)[mine], real=False)
        score.update(features(3)[mine] * 3, mine)
        clip.update(features(4)[mine], features(5)[mine])
        results[rank] = (float(fid.compute()), *map(float, score.compute()), float(clip.compute()))


def test_two_ranks_give_the_one_process_numbers(tmp_path):
    expected = (
        frechet_distance(FeatureStats.of(features(0)), FeatureStats.of(features(1, shift=0.5))),
        *inception_score(features(3) * 3, splits=4),
        clip_score(features(4), features(5)),
    )
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_two_ranks, args=(str(tmp_path / "init"), results), nprocs=2)
        for rank in (0, 1):
            assert results[rank] == pytest.approx(expected, rel=1e-9)


def test_cmmd_equals_the_reference_formula_and_grows_with_the_shift():
    """The authors' distance.py: K = exp(-||x - y||^2 / (2 sigma^2)) on normalised embeddings, sigma 10,
    1000 x (mean K_xx + mean K_yy - 2 mean K_xy), diagonals included."""
    import numpy as np

    from bksdm.eval.metric_states import CMMD

    rng = np.random.default_rng(0)
    real, generated = rng.normal(size=(50, 16)), rng.normal(size=(30, 16)) + 0.3

    def reference(x, y, sigma=10.0, scale=1000.0):
        x, y = x / np.linalg.norm(x, axis=1, keepdims=True), y / np.linalg.norm(y, axis=1, keepdims=True)
        gamma = 1 / (2 * sigma**2)

        def k(a, b):
            squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
            return np.exp(-gamma * squared).mean()

        return scale * (k(x, x) + k(y, y) - 2 * k(x, y))

    metric = CMMD()
    metric.load_real(torch.from_numpy(real))
    for part in np.split(generated, [7, 20]):  # batch by batch
        metric.update(torch.from_numpy(part))
    assert float(metric.compute()) == pytest.approx(reference(real, generated), rel=1e-10)
    metric.reset()
    metric.update(torch.from_numpy(rng.normal(size=(30, 16)) + 1.0))
    assert float(metric.compute()) > reference(real, generated)  # a larger shift, a larger distance
    assert metric.real is not None  # the real side survives reset
