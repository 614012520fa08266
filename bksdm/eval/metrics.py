"""FID, Inception Score and CLIP score from features, in float64 torch (no scipy, no torchvision).

FID: ||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2)), where tr((S_1 S_2)^(1/2)) is computed
as the sum of the square roots of the eigenvalues of S_1^(1/2) S_2 S_1^(1/2) (symmetric, PSD), which is
exact and stabler than a general matrix square root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class FeatureStats:
    """Mean (D,) and covariance (D, D) of N feature vectors, float64."""

    mean: torch.Tensor
    cov: torch.Tensor
    count: int

    @classmethod
    def of(cls, features: torch.Tensor) -> FeatureStats:
        features = features.double()
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(
                f"feature statistics need (N >= 2, D) features, got shape {tuple(features.shape)}"
            )
        return cls(features.mean(0), torch.cov(features.T), features.shape[0])

    def save(self, path: str | Path, **record) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.partial.npz")
        np.savez(staging, mean=self.mean.numpy(), cov=self.cov.numpy(), count=self.count, **record)
        staging.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        with np.load(path) as data:
            return cls(torch.from_numpy(data["mean"]), torch.from_numpy(data["cov"]), int(data["count"]))


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """The Fréchet distance between two Gaussians fitted to features (FID when they are Inception's)."""
    if a.mean.shape != b.mean.shape:
        raise ValueError(
            f"feature statistics of different widths: {tuple(a.mean.shape)} and {tuple(b.mean.shape)}"
        )
    root = _psd_sqrt(a.cov)
    cross = torch.linalg.eigvalsh(root @ b.cov @ root).clamp_min(0).sqrt().sum()
    distance = (a.mean - b.mean).pow(2).sum() + a.cov.trace() + b.cov.trace() - 2 * cross
    return float(distance.clamp_min(0))


def inception_score(
    logits: torch.Tensor, splits: int = 10, shuffle_seed: int | None = 2020
) -> tuple[float, float]:
    """Mean and standard deviation over ``splits`` of exp(E_x KL(p(y|x) || p(y))), from (N, C) logits.

    As torch-fidelity computes it (the paper's IS): images shuffled by ``np.random.RandomState(2020)``
    (``None``: not shuffled), split ``i`` holds rows ``i*N//splits`` up to ``(i+1)*N//splits``.
    """
    count = logits.shape[0]
    if count < splits:
        raise ValueError(f"inception score with {splits} splits needs >= {splits} images, got {count}")
    if shuffle_seed is not None:
        logits = logits[torch.from_numpy(np.random.RandomState(shuffle_seed).permutation(count))]
    probabilities, log_probabilities = logits.double().softmax(dim=1), logits.double().log_softmax(dim=1)
    scores = []
    for i in range(splits):
        part = slice(i * count // splits, (i + 1) * count // splits)
        marginal = probabilities[part].mean(0, keepdim=True)
        # clamped so that a class no image in the split predicts adds 0, not 0 * inf
        log_marginal = marginal.clamp_min(torch.finfo(torch.float64).tiny).log()
        kl = (probabilities[part] * (log_probabilities[part] - log_marginal)).sum(1)
        scores.append(kl.mean().exp())
    scores = torch.stack(scores)
    return float(scores.mean()), float(scores.std(unbiased=False))


def clip_score(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> float:
    """The paper's CLIP score: mean raw cosine similarity of paired image and caption embeddings (not x100)."""
    if image_embeddings.shape != text_embeddings.shape:
        raise ValueError(
            f"{tuple(image_embeddings.shape)} image and {tuple(text_embeddings.shape)} text embeddings"
        )
    return float(
        torch.nn.functional.cosine_similarity(
            image_embeddings.double(), text_embeddings.double(), dim=1
        ).mean()
    )
