"""Scoring generations of the mini world: does the image show what its caption says?"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from bksdm.miniworld.models import AttributeClassifier
from bksdm.miniworld.world import parse_caption


def noise_seed(index: int, num_captions: int) -> int:
    """The seed of image ``index`` of a run cycling through ``num_captions`` captions: round ``r`` of
    caption ``c`` (``index = r * num_captions + c``) starts from noise seeded by (r, c) alone."""
    round_, caption = divmod(index, num_captions)
    return round_ * 100_003 + caption


@torch.no_grad()
def generate_pixels(
    pipeline,
    jobs: Sequence[tuple[str, int]],
    num_inference_steps: int = 25,
    guidance_scale: float = 3.0,
    batch_size: int = 90,
    progress: str | None = None,
):
    """uint8 images (len(jobs), 3, H, W) on the CPU, one per ``(caption, noise seed)`` job, yielded batch
    by batch with their jobs' positions (``range``); batching does not change an image. ``progress``: the
    name of a progress bar (None: none)."""
    from bksdm.eval.scoring import batches

    positions = list(range(len(jobs)))
    for chunk in batches(positions, batch_size, progress):
        out = pipeline(
            [jobs[i][0] for i in chunk],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=[torch.Generator().manual_seed(jobs[i][1]) for i in chunk],
            output_type="pt",
        ).images
        yield range(chunk[0], chunk[-1] + 1), (out.float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


def to_signed(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 images as the classifier reads them: float in [-1, 1]."""
    return pixels.float() / 255 * 2 - 1


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
    ``list(captions) * len(seeds)``): round ``s`` of caption ``c`` is image ``s * len(captions) + c`` of
    ``noise_seed``. Each is quantised to 8 bits, as a saved PNG holds it (``eval=miniworld`` scores its
    saved images), so scores in memory and from the files agree."""
    jobs = [
        (text, noise_seed(s * len(captions) + c, len(captions)))
        for s in seeds
        for c, text in enumerate(captions)
    ]
    settings = (num_inference_steps, guidance_scale, batch_size, progress)
    return torch.cat([to_signed(pixels) for _, pixels in generate_pixels(pipeline, jobs, *settings)])


@torch.no_grad()
def attribute_accuracy(
    classifier: AttributeClassifier,
    images: torch.Tensor,
    captions: Sequence[str],
    batch_size: int = 256,
    labels_of: Callable[[str], tuple[int, ...]] = parse_caption,
) -> dict[str, float]:
    """Fraction of images (N, 3, H, W) in [-1, 1] whose label slots the classifier reads as their caption
    says: per slot (the classifier's heads: shape, colour, position, size in the 64 px world), over the
    images whose caption has that slot, and every slot at once (``all``). ``labels_of`` gives a caption's
    labels in head order, -1 for a slot it has not (``worlds.WorldKind.labels_of``)."""
    labels = torch.tensor([labels_of(text) for text in captions])
    classifier.eval()
    predicted = torch.cat(
        [
            torch.stack(
                [logits.argmax(1) for logits in classifier(images[i : i + batch_size]).values()], dim=1
            )
            for i in range(0, len(images), batch_size)
        ]
    )
    present = labels >= 0
    correct = (predicted == labels) | ~present
    scores = {
        name: float(correct[present[:, i], i].float().mean())
        for i, name in enumerate(classifier.heads)
        if present[:, i].any()
    }
    return {**scores, "all": float(correct.all(1).float().mean())}
