"""The two mini worlds as the build and the scoring see them: how items are drawn, which captions exist,
what a caption's labels are.

``single`` is ``world.py``'s 64 px world of one shape; ``scenes`` is ``scenes.py``'s 128 px world of one
object or two in a relation (issue 22). Everything that differs between them for building a teacher and
scoring its images is here, so ``build.py`` and ``scoring.py`` hold no ``if world == ...``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from torch.utils.data import Dataset

from bksdm.miniworld import scenes, world
from bksdm.miniworld.models import SCENE_TEXT_TOKENS, TEXT_TOKENS


@dataclass(frozen=True)
class WorldKind:
    """What the build needs to know of a world."""

    name: str
    resolution: int  # px
    text_tokens: int  # the tokenizer's max length: the longest caption fits
    slots: dict[str, int]  # label slot -> number of values: the classifier's heads, in label order
    captions: Callable[[], list[str]]  # every caption, in a fixed order
    labels_of: Callable[[str], tuple[int, ...]]  # a caption's labels, -1 for a slot it has not
    # (num_samples, seed, offset, split, resolution=None: the world's) -> items as ``MiniWorld`` gives them
    items: Callable[..., Dataset]
    held_out_splits: tuple[str, ...]  # what a held-out pool is drawn from, besides later train items
    # the (caption, split) pairs an evaluation's images cycle through, in order: a multiple of its length
    # weighs them as meant; split "train" is what training draws, the others are held-out combinations
    evaluation_captions: Callable[[], list[tuple[str, str]]]


def _single_items(
    num_samples: int, seed: int, offset: int = 0, split: str = "train", resolution: int | None = None
) -> Dataset:
    if split != "train":
        raise ValueError(f"split={split!r}: the single-object world has one split, 'train'")
    return world.MiniWorld(num_samples, resolution or world.RESOLUTION, seed=seed, offset=offset)


def _scene_items(
    num_samples: int, seed: int, offset: int = 0, split: str = "train", resolution: int | None = None
) -> Dataset:
    return scenes.SceneWorld(
        num_samples, resolution or scenes.RESOLUTION, seed=seed, offset=offset, split=split
    )


@cache
def _scene_captions() -> list[str]:
    singles = [text for text, _ in world.all_captions()]
    return singles + scenes.pair_captions()


EVALUATION_OFFSET = 10_000_000  # world items from here on are never trained on (training uses far fewer)
SCENE_EVALUATION_ROUND = 1000  # captions in one round of the relational world's evaluation


@cache
def _scene_evaluation_captions() -> list[tuple[str, str]]:
    """One round of 1000: the captions of held-out items of the world (a quarter of one object, as training
    draws them), and in every fifth place a held-out-binding pair's, which training never draws."""
    captions = []
    for position in range(SCENE_EVALUATION_ROUND):
        split = "held_out" if position % 5 == 4 else "train"
        captions.append((scenes.scene(EVALUATION_OFFSET + position, seed=0, split=split).caption, split))
    return captions


WORLDS = {
    "single": WorldKind(
        name="single",
        resolution=world.RESOLUTION,
        text_tokens=TEXT_TOKENS,
        slots={name: len(values) for name, values in world.ATTRIBUTES.items()},
        captions=lambda: [text for text, _ in world.all_captions()],
        labels_of=world.parse_caption,
        items=_single_items,
        held_out_splits=(),
        evaluation_captions=lambda: [(text, "train") for text, _ in world.all_captions()],
    ),
    "scenes": WorldKind(
        name="scenes",
        resolution=scenes.RESOLUTION,
        text_tokens=SCENE_TEXT_TOKENS,
        slots={slot: len(scenes.VALUES[slot]) for slot in scenes.LABEL_SLOTS},
        captions=_scene_captions,
        labels_of=scenes.caption_labels,
        items=_scene_items,
        held_out_splits=("held_out",),
        evaluation_captions=_scene_evaluation_captions,
    ),
}


def world_kind(name: str) -> WorldKind:
    if name not in WORLDS:
        raise ValueError(f"world={name!r}: accepted are {list(WORLDS)}")
    return WORLDS[name]
