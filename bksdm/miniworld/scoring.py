"""Scoring generations of the mini world: does the image show what its caption says?"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bksdm.miniworld.models import AttributeClassifier
from bksdm.miniworld.world import ATTRIBUTES, parse_caption


@torch.no_grad()
def generate(
    pipeline,
    captions: Sequence[str],
    seeds: Sequence[int],
    num_inference_steps: int = 25,
    guidance_scale: float = 3.0,
    batch_size: int = 90,
    progress: str | None = None,
) -> torch.Tensor:
    """Images (len(seeds) x len(captions), 3, H, W) in [-1, 1] on the CPU, seed-major (their captions are
    ``list(captions) * len(seeds)``). The image of caption ``c`` with seed ``s`` starts from noise seeded by
    (s, c) alone, so batching does not change it. ``progress``: the name of a progress bar (None: none)."""
    from bksdm.eval.scoring import batches

    jobs = [(text, seed * 100_003 + c) for seed in seeds for c, text in enumerate(captions)]
    images = []
    for chunk in batches(jobs, batch_size, progress):
        generators = [torch.Generator().manual_seed(noise_seed) for _, noise_seed in chunk]
        out = pipeline(
            [text for text, _ in chunk],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generators,
            output_type="pt",
        ).images
        images.append(out.float().cpu() * 2 - 1)
    return torch.cat(images)


@torch.no_grad()
def attribute_accuracy(
    classifier: AttributeClassifier, images: torch.Tensor, captions: Sequence[str], batch_size: int = 256
) -> dict[str, float]:
    """Fraction of images (N, 3, H, W) in [-1, 1] whose shape, colour, position, size (and all four at
    once, ``all``) the classifier reads as their caption says."""
    labels = torch.tensor([parse_caption(text) for text in captions])
    classifier.eval()
    predicted = torch.cat(
        [
            torch.stack(
                [logits.argmax(1) for logits in classifier(images[i : i + batch_size]).values()], dim=1
            )
            for i in range(0, len(images), batch_size)
        ]
    )
    correct = predicted == labels
    scores = {name: float(correct[:, i].float().mean()) for i, name in enumerate(ATTRIBUTES)}
    return {**scores, "all": float(correct.all(1).float().mean())}
