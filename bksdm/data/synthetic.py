"""Synthetic captioned images generated in code: the offline demo and test source."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from bksdm.data.sampler import item_key
from bksdm.data.transforms import ImageTransform

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {"left": 0.3, "centre": 0.5, "right": 0.7}


class SyntheticCaptions(Dataset):
    """``num_samples`` images of a coloured shape on a plain background, each with its caption.

    Item ``i`` is the same on every machine (drawn from ``random.Random(seed * 1_000_003 + i)``), e.g.
    "a red circle on the left, on a blue background".
    """

    def __init__(
        self, num_samples: int = 512, resolution: int = 128, seed: int = 0, random_flip: bool = False
    ):
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples!r} must be >= 1")
        self.num_samples, self.resolution, self.seed = num_samples, resolution, seed
        self.transform = ImageTransform(resolution, center_crop=True, random_flip=random_flip)

    def __len__(self) -> int:
        return self.num_samples

    def describe(self, index: int) -> tuple[str, str, str, str]:
        rng = random.Random(self.seed * 1_000_003 + index)
        colour, background = rng.sample(sorted(COLOURS), 2)
        return colour, rng.choice(SHAPES), rng.choice(sorted(POSITIONS)), background

    def draw(self, index: int) -> tuple[Image.Image, str]:
        colour, shape, position, background = self.describe(index)
        size = self.resolution
        image = Image.new("RGB", (size, size), COLOURS[background])
        cx, cy, r = POSITIONS[position] * size, size / 2, size / 5
        box = (cx - r, cy - r, cx + r, cy + r)
        draw = ImageDraw.Draw(image)
        if shape == "circle":
            draw.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            draw.rectangle(box, fill=COLOURS[colour])
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[colour])
        where = "in the centre" if position == "centre" else f"on the {position}"
        return image, f"a {colour} {shape} {where}, on a {background} background"

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, sample_seed = item_key(key)
        image, caption = self.draw(index)
        if sample_seed is None:
            return {**self.transform.sample(image), "caption": caption}
        return {
            **self.transform.sample(image, random.Random(sample_seed)),
            "caption": caption,
            "sample_seed": sample_seed,
        }
