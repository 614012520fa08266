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
    items: Callable[..., Dataset]  # (num_samples, seed, offset, split) -> items as ``MiniWorld`` gives them
    held_out_splits: tuple[str, ...]  # what a held-out pool is drawn from, besides later train items


def _single_items(num_samples: int, seed: int, offset: int = 0, split: str = "train") -> Dataset:
    if split != "train":
        raise ValueError(f"split={split!r}: the single-object world has one split, 'train'")
    return world.MiniWorld(num_samples, seed=seed, offset=offset)


def _scene_items(num_samples: int, seed: int, offset: int = 0, split: str = "train") -> Dataset:
    return scenes.SceneWorld(num_samples, seed=seed, offset=offset, split=split)


@cache
def _scene_captions() -> list[str]:
    singles = [text for text, _ in world.all_captions()]
    return singles + scenes.pair_captions()


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
    ),
}


def world_kind(name: str) -> WorldKind:
    if name not in WORLDS:
        raise ValueError(f"world={name!r}: accepted are {list(WORLDS)}")
    return WORLDS[name]
