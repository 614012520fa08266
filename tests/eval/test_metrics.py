"""Evaluation metrics against direct computations: FID, Inception Score, CLIP score."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from bksdm.eval.metrics import FeatureStats, clip_score, frechet_distance, inception_score


def test_fid_equals_the_direct_frechet_distance_and_is_zero_against_itself():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 16, generator=g, dtype=torch.float64)
    b = (
        torch.randn(150, 16, generator=g, dtype=torch.float64)
        @ torch.randn(16, 16, generator=g, dtype=torch.float64)
        * 0.5
        + 0.3
    )
    sa, sb = FeatureStats.of(a), FeatureStats.of(b)
    mu1, mu2, s1, s2 = sa.mean.numpy(), sb.mean.numpy(), sa.cov.numpy(), sb.cov.numpy()
    root = scipy.linalg.sqrtm(s1 @ s2).real
    direct = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))
    assert frechet_distance(sa, sb) == pytest.approx(direct, rel=1e-9)
    assert frechet_distance(sa, sa) == pytest.approx(0.0, abs=1e-9)


def test_inception_score_and_clip_score_by_hand():
    uniform = torch.zeros(20, 5)  # every image unsure: p(y|x) = p(y), IS = 1
    assert inception_score(uniform, splits=10) == pytest.approx((1.0, 0.0))
    confident = torch.full((20, 4), -1e4)
    confident[torch.arange(20), torch.arange(20) % 4] = 0.0  # each image sure, classes balanced: IS = C
    assert inception_score(confident, splits=1)[0] == pytest.approx(4.0)
    e = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert clip_score(e, torch.tensor([[2.0, 0.0], [1.0, 1.0]])) == pytest.approx((1.0 + math.sqrt(0.5)) / 2)
    with pytest.raises(ValueError, match="needs >= 10 images"):
        inception_score(torch.zeros(5, 3))
