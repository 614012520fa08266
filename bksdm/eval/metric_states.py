"""The paper's three scores as ``torchmetrics.Metric``s: state accumulated batch by batch and summed (or
gathered) across ranks by torchmetrics, the arithmetic of ``bksdm.eval.metrics``.

- ``FID``: torchmetrics' ``FrechetInceptionDistance`` (its float64 feature sums and sync) with the
  evaluation's feature extractor as its feature module; the distance is ``frechet_distance``'s (exact
  eigenvalues of a symmetric matrix, where torchmetrics takes general eigenvalues of S_1 S_2). Real
  statistics are loaded once (``load_real``) and survive ``reset`` (``reset_real_features=False``).
- ``InceptionScore``: torch-fidelity's split rule (its seeded shuffle of the images, then contiguous
  splits) over logits kept with each image's index, so that images gathered from several ranks are put
  back in the one-process order first; torchmetrics' own ``InceptionScore`` shuffles with
  ``torch.randperm`` and would give another number than the paper's.
- ``CLIPScore``: the paper's raw cosine of paired embeddings, summed; torchmetrics' ``CLIPScore`` is
  100 x max(cosine, 0) with Hugging Face CLIP models, not open_clip's ViT-g-14.

Beyond the paper: ``CMMD`` (Jayasumana et al., 2024), the maximum mean discrepancy of CLIP image
embeddings under a Gaussian kernel, which assumes no Gaussian features and settles at small sample
counts; fed the CLIP scorer's own embeddings, it costs no extra network pass.

Each takes features (FID also takes images); one extractor pass feeds FID and IS together
(``bksdm.eval.scoring``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance

from bksdm.eval.metrics import FeatureStats, frechet_distance, inception_score


class PoolFeatures(nn.Module):
    """An image extractor (``images -> (pool features, logits)``) as the feature module torchmetrics'
    FID calls: ``images -> pool features (N, D)``."""

    def __init__(self, extractor: nn.Module, num_features: int):
        super().__init__()
        self.extractor, self.num_features = extractor, num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor(images)[0]


class FID(FrechetInceptionDistance):
    """FID of generated ("fake") features against real ones; ``num_features``: the extractor's D.

    ``update(images, real)`` runs the extractor; ``update(features=..., real=...)`` takes its output.
    """

    full_state_update = False

    def __init__(self, extractor: nn.Module, num_features: int, **kwargs):
        super().__init__(feature=PoolFeatures(extractor, num_features), reset_real_features=False, **kwargs)

    def update(
        self, imgs: torch.Tensor | None = None, real: bool = False, features: torch.Tensor | None = None
    ):
        if features is None:
            features = self.inception(imgs)
        features = features.double().to(self.fake_features_sum.device)
        if real:
            self.real_features_sum += features.sum(0)
            self.real_features_cov_sum += features.T @ features
            self.real_features_num_samples += len(features)
        else:
            self.fake_features_sum += features.sum(0)
            self.fake_features_cov_sum += features.T @ features
            self.fake_features_num_samples += len(features)

    def statistics(self, real: bool) -> FeatureStats:
        """Mean and covariance (unbiased, as ``torch.cov``) of one side's features so far."""
        side = "real" if real else "fake"
        total, products = getattr(self, f"{side}_features_sum"), getattr(self, f"{side}_features_cov_sum")
        count = int(getattr(self, f"{side}_features_num_samples"))
        if count < 2:
            raise ValueError(f"FID needs at least 2 {side} images, got {count}")
        mean = total / count
        cov = (products - count * torch.outer(mean, mean)) / (count - 1)
        return FeatureStats(mean.cpu(), cov.cpu(), count)

    def load_real(self, stats: FeatureStats) -> None:
        """Real statistics computed before (e.g. the cached ones of COCO val2014), as if their features had
        been passed to ``update(real=True)``; kept across ``reset``. With several ranks, where ``compute``
        sums every rank's states, the first rank of the metric's group holds them, the others nothing."""
        if dist.is_available() and dist.is_initialized() and dist.get_rank(self.process_group) != 0:
            return
        device = self.real_features_sum.device
        mean, cov = stats.mean.double().to(device), stats.cov.double().to(device)
        self.real_features_sum = mean * stats.count
        self.real_features_cov_sum = cov * (stats.count - 1) + stats.count * torch.outer(mean, mean)
        self.real_features_num_samples = torch.tensor(stats.count, device=device)

    def compute(self) -> torch.Tensor:
        distance = frechet_distance(self.statistics(real=True), self.statistics(real=False))
        return torch.tensor(distance, dtype=torch.float64)


class InceptionScore(Metric):
    """The paper's IS (torch-fidelity's): mean and std over ``splits`` of exp(E KL(p(y|x) || p(y))).

    ``update(logits (N, C), indices (N,))``: each image's index in the whole prompt set."""

    full_state_update = False

    def __init__(self, splits: int = 10, **kwargs):
        super().__init__(**kwargs)
        self.splits = splits
        self.add_state("logits", [], dist_reduce_fx="cat")
        self.add_state("indices", [], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, indices: torch.Tensor) -> None:
        self.logits.append(logits.double())
        self.indices.append(torch.as_tensor(indices, device=logits.device).long())

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        logits, indices = (torch.cat(s) if isinstance(s, list) else s for s in (self.logits, self.indices))
        mean, std = inception_score(logits[indices.argsort()].cpu(), self.splits)
        return torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)


def paired_cosines(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """(N,) float64 raw cosines of paired (N, D) image and caption embeddings: each image's CLIP score."""
    if image_embeddings.shape != text_embeddings.shape:
        raise ValueError(
            f"{tuple(image_embeddings.shape)} image and {tuple(text_embeddings.shape)} text embeddings"
        )
    return nn.functional.cosine_similarity(image_embeddings.double(), text_embeddings.double(), dim=1)


class CLIPScore(Metric):
    """The paper's CLIP score: mean raw cosine similarity of paired image and caption embeddings."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("cosine_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> None:
        cosine = paired_cosines(image_embeddings, text_embeddings)
        self.cosine_sum += cosine.sum().to(self.cosine_sum.device)
        self.count += len(cosine)

    def compute(self) -> torch.Tensor:
        return self.cosine_sum / self.count


def _kernel_mean(a: torch.Tensor, b: torch.Tensor, gamma: float, block: int = 4096) -> torch.Tensor:
    """Mean of exp(-gamma ||a_i - b_j||^2) over all pairs, in blocks (30K x 30K pairs would be 7 GB)."""
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    b_norms = (b * b).sum(1)
    for start in range(0, len(a), block):
        rows = a[start : start + block]
        distances = (rows * rows).sum(1)[:, None] + b_norms[None, :] - 2 * rows @ b.T
        total += torch.exp(-gamma * distances).sum()
    return total / (len(a) * len(b))


class CMMD(Metric):
    """CMMD: ``scale`` x MMD^2 of L2-normalised image embeddings under a Gaussian kernel of width
    ``sigma``, the biased (V-statistic) estimate, as the authors' reference code (sigma 10, scale 1000).

    ``update(embeddings (N, E))``: generated images' embeddings (synced across ranks by concatenation);
    ``load_real(embeddings)``: the real side, on every rank (not a synced state)."""

    full_state_update = False

    def __init__(self, sigma: float = 10.0, scale: float = 1000.0, **kwargs):
        super().__init__(**kwargs)
        self.gamma, self.scale = 1.0 / (2 * sigma**2), scale
        self.add_state("generated", [], dist_reduce_fx="cat")
        self.real: torch.Tensor | None = None

    @staticmethod
    def _normalised(embeddings: torch.Tensor) -> torch.Tensor:
        embeddings = embeddings.double()
        return embeddings / embeddings.norm(dim=1, keepdim=True)

    def load_real(self, embeddings: torch.Tensor) -> None:
        self.real = self._normalised(embeddings)

    def update(self, embeddings: torch.Tensor) -> None:
        self.generated.append(self._normalised(embeddings))

    def compute(self) -> torch.Tensor:
        if self.real is None:
            raise ValueError("CMMD needs the real images' embeddings first (load_real)")
        generated = torch.cat(self.generated) if isinstance(self.generated, list) else self.generated
        real = self.real.to(generated.device)
        mmd = (
            _kernel_mean(real, real, self.gamma)
            + _kernel_mean(generated, generated, self.gamma)
            - 2 * _kernel_mean(real, generated, self.gamma)
        )
        return self.scale * mmd
