"""The mini world: captioned 64 px images of one shape, generated deterministically from an integer index.

Four named attributes: shape (3) x colour (6) x position (5) x size (2) = 180 captions, e.g. "a small red
circle on the left" or "a large blue square in the center". Unnamed nuisances make images of one caption
differ: the exact position, size and colour jitter, and the background (4 tones, half of them split in
two). Images are drawn at twice the resolution and downsampled, so edges are antialiased.
"""

from __future__ import annotations

import io
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from bksdm.data.sampler import item_key
from bksdm.data.transforms import uint8_to_unit

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (210, 35, 35),
    "green": (40, 170, 60),
    "blue": (45, 75, 220),
    "yellow": (235, 205, 35),
    "purple": (150, 50, 190),
    "orange": (245, 150, 20),
}
POSITIONS = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
}
# radius range, fraction of the side: a small shape still spans about two latent cells (8x downsampling)
SIZES = {"small": (0.12, 0.15), "large": (0.2, 0.25)}
BACKGROUNDS = ((70, 70, 75), (150, 150, 150), (205, 195, 170), (110, 125, 140))
# attribute name -> its values, in the order of the classifier's heads and labels
ATTRIBUTES = {"shape": SHAPES, "colour": tuple(COLOURS), "position": tuple(POSITIONS), "size": tuple(SIZES)}
RESOLUTION = 64
SUPERSAMPLE = 2


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    position: str
    size: str
    centre: tuple[float, float]  # fraction of the side, x then y
    radius: float  # fraction of the side
    rgb: tuple[int, int, int]
    background: tuple[tuple[int, int, int], ...]  # one tone, or two (top and bottom halves)

    @property
    def caption(self) -> str:
        return caption(self.shape, self.colour, self.position, self.size)

    @property
    def labels(self) -> tuple[int, ...]:
        """Index of each attribute's value (shape, colour, position, size)."""
        return tuple(ATTRIBUTES[name].index(getattr(self, name)) for name in ATTRIBUTES)


def caption(shape: str, colour: str, position: str, size: str) -> str:
    where = "in the center" if position == "center" else f"on the {position}"
    return f"a {size} {colour} {shape} {where}"


def all_captions() -> list[tuple[str, tuple[int, ...]]]:
    """Every caption of the world with its attribute labels, in a fixed order (180 of them)."""
    out = []
    for values in itertools.product(*ATTRIBUTES.values()):
        named = dict(zip(ATTRIBUTES, values, strict=True))
        out.append((caption(**named), tuple(ATTRIBUTES[k].index(v) for k, v in named.items())))
    return out


def parse_caption(text: str) -> tuple[int, ...]:
    """The attribute labels of a caption of this world; ValueError naming the text otherwise."""
    if text in _CAPTION_LABELS:
        return _CAPTION_LABELS[text]
    raise ValueError(f"caption {text!r} is not one of the mini world's 180 (e.g. {all_captions()[0][0]!r})")


def scene(index: int, seed: int = 0) -> Scene:
    """Item ``index`` of the world of ``seed``: the same on every machine."""
    rng = random.Random(seed * 1_000_003 + index)
    shape, colour, position, size = (rng.choice(values) for values in ATTRIBUTES.values())
    cx, cy = POSITIONS[position]
    centre = (cx + rng.uniform(-0.04, 0.04), cy + rng.uniform(-0.04, 0.04))
    rgb = jittered(rng, colour)
    background = draw_background(rng)
    return Scene(shape, colour, position, size, centre, rng.uniform(*SIZES[size]), rgb, background)


def jittered(rng: random.Random, colour: str) -> tuple[int, int, int]:
    """``colour``'s RGB with each channel moved by up to 15 levels (an unnamed nuisance)."""
    return tuple(int(np.clip(c + rng.randint(-15, 15), 0, 255)) for c in COLOURS[colour])


def draw_background(rng: random.Random) -> tuple[tuple[int, int, int], ...]:
    """One background tone, or two (top and bottom halves), of ``BACKGROUNDS``."""
    tones = rng.sample(BACKGROUNDS, 2)
    return tuple(tones) if rng.random() < 0.5 else (tones[0],)


def render(item: Scene, resolution: int = RESOLUTION) -> Image.Image:
    return render_shapes([(item.shape, item.centre, item.radius, item.rgb)], item.background, resolution)


def render_shapes(shapes, background, resolution: int) -> Image.Image:
    """(shape, centre, radius, rgb) of ``SHAPES`` on ``background`` (one tone, or two halves) at ``resolution``
    px; centres (x, y) and radii are fractions of the side. Drawn at ``SUPERSAMPLE`` times the resolution and
    downsampled, so edges are antialiased."""
    side = resolution * SUPERSAMPLE
    image = Image.new("RGB", (side, side), background[0])
    draw = ImageDraw.Draw(image)
    if len(background) == 2:
        draw.rectangle((0, side // 2, side, side), fill=background[1])
    for shape, centre, radius, rgb in shapes:
        cx, cy, r = centre[0] * side, centre[1] * side, radius * side
        if shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb)
        elif shape == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=rgb)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=rgb)
    return image.resize((resolution, resolution), Image.Resampling.LANCZOS)


class MiniWorld(Dataset):
    """``num_samples`` items of the world of ``seed``, starting at item ``offset`` (held-out splits use
    another offset). Each item: ``pixel_values`` (3, R, R) in [-1, 1], ``caption``, ``labels`` (4,) long;
    with a ResumableSampler key also ``sample_seed`` (the sample's noise seed in training)."""

    def __init__(
        self, num_samples: int = 100_000, resolution: int = RESOLUTION, seed: int = 0, offset: int = 0
    ):
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples!r} must be >= 1")
        if resolution < 8 or resolution % 8:
            raise ValueError(f"resolution={resolution!r} must be a positive multiple of 8 (pixels)")
        self.num_samples, self.resolution, self.seed, self.offset = num_samples, resolution, seed, offset

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, sample_seed = item_key(key)
        image, text, labels = self.picture(index)
        sample = {"pixel_values": uint8_to_unit(image), "caption": text, "labels": labels}
        if sample_seed is not None:
            sample["sample_seed"] = sample_seed
        return sample

    def picture(self, index: int) -> tuple[torch.Tensor, str, torch.Tensor]:
        """Item ``index`` (of this dataset) as drawn: the image (3, R, R) uint8, its caption and labels. A
        pool of many keeps these: converting each to float first leaves the heap fragmented (about 11 GB of
        resident memory for 50,000 of the 128 px world's items)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"item {index} of a {self.num_samples}-item mini world")
        image, text, labels = self.item(self.offset + index)
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous(), text, torch.tensor(labels)

    def shard_items(self) -> Iterator[tuple[str, bytes, str, str]]:
        """(key, PNG bytes, caption, "png") per item, for ``python -m bksdm.prepare data=miniworld``; the
        key is the item's number in the world, so shards of different offsets never share keys."""
        for index in range(self.num_samples):
            image, text, _ = self.item(self.offset + index)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            yield f"{self.offset + index:09d}", buffer.getvalue(), text, "png"

    def item(self, index: int) -> tuple[Image.Image, str, tuple[int, ...]]:
        """The image, caption and labels of item ``index`` of the world."""
        drawn = scene(index, self.seed)
        return render(drawn, self.resolution), drawn.caption, drawn.labels


_CAPTION_LABELS = dict(all_captions())
