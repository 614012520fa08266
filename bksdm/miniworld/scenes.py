"""The relational mini world (issue 22, its first part): captioned 128 px scenes of one object, or of two
objects in a spatial relation, generated deterministically from an integer index.

Where ``world.py``'s images hold one shape named by four independent attributes, a scene here binds
attributes to objects and relates them: "a small red circle to the left of a large blue square". Nothing
local tells which colour goes with which shape or which object is on which side, so the caption needs the
global context a U-Net's deep stages provide. At 128 px the world's 4x-down VAE makes latents 32x32, and
the innermost stage of a four-stage U-Net works at 4x4 (the 64 px world's ran at 1x1, where its teacher
learnt to ignore the mid block; at 2x2, under an SD VAE's 16x16 latents, the built teachers did too). A quarter of the scenes hold one object with ``world.py``'s caption ("a small red circle on
the left"), so that every object is also seen alone.

Labels are what the picture shows, whichever way its caption says it: "a red circle to the left of a blue
square" and "a blue square to the right of a red circle" name one image, so a pair's labels name the
left (or upper) object first, the other second, and the axis they are apart on. The two objects sit at
nearly the same height (or column), so the axis is never in doubt; ``caption_labels`` gives any caption's
labels, which is how an image drawn for a caption is scored.

Held-out combinations: a two-object caption in which an object has a colour-shape binding of
``HELD_OUT_BINDINGS`` ("a red square", "a blue triangle") is never drawn in ``split="train"``, and only such
captions are drawn in ``split="held_out"``; the single-object scenes of those bindings stay in training, so
a model has seen a red square alone, and red things and squares in pairs, but never a red square in a pair.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from PIL import Image

from bksdm.miniworld.world import (
    COLOURS,
    POSITIONS,
    SHAPES,
    MiniWorld,
    draw_background,
    jittered,
    render_shapes,
)
from bksdm.miniworld.world import caption as single_caption

RESOLUTION = 128
# radius range, fraction of the side: a small object spans 5-6 latent cells of 32, a large one 8-10
SIZES = {"small": (0.08, 0.1), "large": (0.13, 0.16)}
RELATIONS = ("to the left of", "to the right of", "above", "below")
AXES = ("horizontal", "vertical")  # left of / right of; above / below
TWO_OBJECTS = 0.75  # the share of two-object scenes
HELD_OUT_BINDINGS = (("red", "square"), ("blue", "triangle"))
SPLITS = ("train", "held_out")
# a label's slots, -1 where a scene has no such thing (a single object has no second object and no axis; a
# pair has no position): the classifier's heads, in order. A pair's first object is its left (or upper) one.
LABEL_SLOTS = ("objects", "shape", "colour", "size", "position", "axis", "shape_2", "colour_2", "size_2")
VALUES = {
    "objects": (1, 2), "shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES),
    "position": tuple(POSITIONS), "axis": AXES, "shape_2": SHAPES, "colour_2": tuple(COLOURS),
    "size_2": tuple(SIZES),
}  # fmt: skip


@dataclass(frozen=True)
class Thing:
    """One drawn object: what the caption names (shape, colour, size) and how it is drawn."""

    shape: str
    colour: str
    size: str
    centre: tuple[float, float]  # fraction of the side, x then y
    radius: float  # fraction of the side
    rgb: tuple[int, int, int]

    @property
    def name(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """One or two ``Thing``s on a background; ``relation`` (of the first to the second) or ``position`` (of
    a single one) as the caption says it."""

    things: tuple[Thing, ...]
    background: tuple[tuple[int, int, int], ...]  # one tone, or two (top and bottom halves)
    relation: str | None = None
    position: str | None = None

    @property
    def caption(self) -> str:
        if len(self.things) == 1:
            thing = self.things[0]
            return single_caption(thing.shape, thing.colour, self.position, thing.size)
        first, second = self.things
        return f"a {first.name} {self.relation} a {second.name}"

    @property
    def labels(self) -> tuple[int, ...]:
        """The index of each ``LABEL_SLOTS`` value, -1 where the scene has none."""
        return caption_labels(self.caption)

    @property
    def held_out(self) -> bool:
        """A two-object scene with a held-out colour-shape binding."""
        return len(self.things) == 2 and any((t.colour, t.shape) in HELD_OUT_BINDINGS for t in self.things)


def caption_labels(text: str) -> tuple[int, ...]:
    """The labels (``LABEL_SLOTS``) of what a caption of this world describes; ValueError naming the text
    otherwise. A pair's are in reading order: "a B to the right of a A" is labelled as "a A to the left of
    a B"."""
    if text in _SINGLE_LABELS:
        shape, colour, position, size = _SINGLE_LABELS[text]
        named = {"objects": 1, "shape": shape, "colour": colour, "size": size, "position": position}
    else:
        for relation in RELATIONS:
            first, _, second = text.partition(f" {relation} ")
            if second:
                break
        objects = [name.split() for name in (first, second)]
        if not second or any(len(words) != 4 or words[0] != "a" for words in objects):
            raise ValueError(
                f"caption {text!r} is not one of the relational mini world's (e.g. {pair_captions()[0]!r})"
            )
        if relation in ("to the right of", "below"):
            objects.reverse()
        (_, size, colour, shape), (_, size_2, colour_2, shape_2) = objects
        axis = AXES[relation in ("above", "below")]
        named = {"objects": 2, "shape": shape, "colour": colour, "size": size, "axis": axis, "shape_2": shape_2,
                 "colour_2": colour_2, "size_2": size_2}  # fmt: skip
    try:
        return tuple(VALUES[slot].index(named[slot]) if slot in named else -1 for slot in LABEL_SLOTS)
    except ValueError:
        raise ValueError(f"caption {text!r} names a value the relational mini world does not have") from None


def pair_captions(split: str | None = None) -> list[str]:
    """Every two-object caption (distinct objects, 36 x 35 x 4 = 5,040), or those of one split, in a
    fixed order."""
    objects = [
        f"{size} {colour} {shape}" for shape, colour, size in itertools.product(SHAPES, COLOURS, SIZES)
    ]
    captions = []
    for first, second in itertools.permutations(objects, 2):
        held = any(tuple(name.split()[1:]) in HELD_OUT_BINDINGS for name in (first, second))
        if split is None or (split == "held_out") == held:
            captions += [f"a {first} {relation} a {second}" for relation in RELATIONS]
    return captions


def scene(index: int, seed: int = 0, split: str = "train") -> Scene:
    """Item ``index`` of the ``split`` of the world of ``seed``: the same on every machine. The held-out
    split holds two-object scenes only."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: accepted are {list(SPLITS)}")
    rng = random.Random((seed * 1_000_003 + index) * len(SPLITS) + SPLITS.index(split))
    while True:  # drawn until the scene belongs to the split (on average 1.2 draws for train, 4.8 held out)
        drawn = _draw(rng, two=split == "held_out" or rng.random() < TWO_OBJECTS)
        if drawn.held_out == (split == "held_out"):
            return drawn


def _draw(rng: random.Random, two: bool) -> Scene:
    background = draw_background(rng)
    if not two:
        position = rng.choice(tuple(POSITIONS))
        cx, cy = POSITIONS[position]
        centre = (cx + rng.uniform(-0.04, 0.04), cy + rng.uniform(-0.04, 0.04))
        return Scene((_thing(rng, centre),), background, position=position)
    while True:
        kinds = [(rng.choice(SHAPES), rng.choice(tuple(COLOURS)), rng.choice(tuple(SIZES))) for _ in range(2)]
        if kinds[0] != kinds[1]:  # two objects the caption can tell apart
            break
    relation = rng.choice(RELATIONS)
    radii = [rng.uniform(*SIZES[size]) for *_, size in kinds]
    # along the relation's axis the first object sits in one half and the second in the other, apart by
    # their radii and a margin (never touching); across it the pair wanders together ("left of" is not "at
    # the left"), each within 0.04 of a shared line, so that the axis is never in doubt
    while True:
        along = [rng.uniform(0.15, 0.45), rng.uniform(0.55, 0.85)]
        if along[1] - along[0] >= sum(radii) + 0.03 and all(
            radius + 0.02 <= a <= 1 - radius - 0.02 for a, radius in zip(along, radii, strict=True)
        ):
            break
    if relation in ("to the right of", "below"):
        along.reverse()
    line = rng.uniform(0.25, 0.75)
    across = [line + rng.uniform(-0.04, 0.04), line + rng.uniform(-0.04, 0.04)]
    horizontal = relation in ("to the left of", "to the right of")
    centres = [(a, c) if horizontal else (c, a) for a, c in zip(along, across, strict=True)]
    things = tuple(
        _thing(rng, centre, *kind, radius=radius)
        for centre, kind, radius in zip(centres, kinds, radii, strict=True)
    )
    return Scene(things, background, relation=relation)


def _thing(rng: random.Random, centre, shape=None, colour=None, size=None, radius=None) -> Thing:
    shape = shape or rng.choice(SHAPES)
    colour = colour or rng.choice(tuple(COLOURS))
    size = size or rng.choice(tuple(SIZES))
    rgb = jittered(rng, colour)
    return Thing(shape, colour, size, centre, radius or rng.uniform(*SIZES[size]), rgb)


def render(item: Scene, resolution: int = RESOLUTION) -> Image.Image:
    """The scene at ``resolution`` px (``world.render_shapes``: supersampled, antialiased edges)."""
    shapes = [(thing.shape, thing.centre, thing.radius, thing.rgb) for thing in item.things]
    return render_shapes(shapes, item.background, resolution)


class SceneWorld(MiniWorld):
    """``num_samples`` scenes of the ``split`` of the world of ``seed``, from item ``offset``; each item as
    ``MiniWorld``'s (``pixel_values`` (3, R, R) in [-1, 1], ``caption``, ``labels``, here (9,) by
    ``LABEL_SLOTS``)."""

    def __init__(
        self,
        num_samples: int = 100_000,
        resolution: int = RESOLUTION,
        seed: int = 0,
        offset: int = 0,
        split: str = "train",
    ):
        super().__init__(num_samples, resolution, seed, offset)
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: accepted are {list(SPLITS)}")
        self.split = split

    def item(self, index: int) -> tuple[Image.Image, str, tuple[int, ...]]:
        drawn = scene(index, self.seed, self.split)
        return render(drawn, self.resolution), drawn.caption, drawn.labels


_SINGLE_LABELS = {  # world.py's captions -> (shape, colour, position, size)
    single_caption(shape, colour, position, size): (shape, colour, position, size)
    for shape, colour, position, size in itertools.product(SHAPES, COLOURS, POSITIONS, SIZES)
}
