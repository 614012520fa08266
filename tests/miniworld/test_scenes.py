"""The relational mini world (bksdm.miniworld.scenes): scenes of one object or two in a relation, drawn from an
integer index, the relation true in the picture, held-out colour-shape bindings never drawn in training."""

import numpy as np
import pytest
import torch

from bksdm.miniworld.scenes import (
    AXES,
    HELD_OUT_BINDINGS,
    LABEL_SLOTS,
    RELATIONS,
    VALUES,
    SceneWorld,
    caption_labels,
    pair_captions,
    render,
    scene,
)

ITEMS = range(400)


def test_an_index_draws_the_same_scene_and_image_every_time():
    for index in (0, 7, 123):
        first, again = scene(index, seed=3), scene(index, seed=3)
        assert first == again and np.array_equal(np.asarray(render(first)), np.asarray(render(again)))
    assert scene(0, seed=0) != scene(0, seed=1) and scene(0) != scene(0, split="held_out")


def test_the_relation_is_true_in_the_picture_and_the_objects_neither_touch_nor_leave_it():
    pairs = [s for s in (scene(i) for i in ITEMS) if len(s.things) == 2]
    assert {s.relation for s in pairs} == set(RELATIONS)
    for s in pairs:
        first, second = s.things
        axis = 0 if s.relation in ("to the left of", "to the right of") else 1  # x, or y (downwards)
        before, after = (first, second) if s.relation in ("to the left of", "above") else (second, first)
        assert before.centre[axis] + before.radius < after.centre[axis] - after.radius, s.caption
        for thing in s.things:
            assert all(thing.radius < c < 1 - thing.radius for c in thing.centre), s.caption
        assert (first.shape, first.colour, first.size) != (second.shape, second.colour, second.size)


def test_held_out_bindings_are_drawn_in_pairs_only_in_the_held_out_split():
    assert len(pair_captions()) == 36 * 35 * 4
    # 4 of the 36 objects carry a held-out binding (2 bindings x 2 sizes): 1260 - 32 x 31 ordered pairs
    assert len(pair_captions("held_out")) == (36 * 35 - 32 * 31) * 4 == 1072
    train, held_out = set(pair_captions("train")), set(pair_captions("held_out"))
    trained = [scene(i) for i in ITEMS]
    assert all(s.caption in train for s in trained if len(s.things) == 2)
    assert all(scene(i, split="held_out").caption in held_out for i in range(100))
    # a red square is seen alone in training, never in a pair
    alone = {(s.things[0].colour, s.things[0].shape) for s in trained if len(s.things) == 1}
    assert set(HELD_OUT_BINDINGS) <= alone
    assert 0.6 < sum(len(s.things) == 2 for s in trained) / len(trained) < 0.8  # 0.75 drawn, 21% of them held


def test_labels_are_what_the_picture_shows_whichever_way_the_caption_says_it():
    for s in (scene(i) for i in range(100)):
        named = {slot: VALUES[slot][i] for slot, i in zip(LABEL_SLOTS, s.labels, strict=True) if i >= 0}
        assert named["objects"] == len(s.things)
        if len(s.things) == 1:
            assert s.labels == caption_labels(s.caption) and named["position"] in s.caption
            assert {"axis", "shape_2", "colour_2", "size_2"}.isdisjoint(named)
            continue
        axis = AXES.index(named["axis"])  # 0: x (left to right), 1: y (top to bottom)
        first, second = sorted(s.things, key=lambda thing: thing.centre[axis])  # reading order
        assert (named["shape"], named["colour"], named["size"]) == (first.shape, first.colour, first.size)
        assert (named["shape_2"], named["colour_2"], named["size_2"]) == (
            second.shape,
            second.colour,
            second.size,
        )
        assert abs(first.centre[1 - axis] - second.centre[1 - axis]) <= 0.08  # on one line: the axis is plain
        # the same picture said the other way round has the same labels
        converse = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below",
                    "below": "above"}[s.relation]  # fmt: skip
        said_back = f"a {s.things[1].name} {converse} a {s.things[0].name}"
        assert caption_labels(said_back) == s.labels
    with pytest.raises(
        ValueError, match=r"caption 'a red cube near a blue sphere' is not one of the relational"
    ):
        caption_labels("a red cube near a blue sphere")
    with pytest.raises(ValueError, match=r"names a value the relational mini world does not have"):
        caption_labels("a small red cube to the left of a large blue square")


def test_the_dataset_serves_128_px_scenes():
    world = SceneWorld(num_samples=3, split="held_out", offset=10)
    item = world[(1, 99)]
    assert item["pixel_values"].shape == (3, 128, 128)
    assert item["caption"] == scene(11, split="held_out").caption and item["sample_seed"] == 99
    assert item["labels"].shape == (len(LABEL_SLOTS),) and item["labels"].dtype == torch.long
    keys = [key for key, *_ in world.shard_items()]
    assert keys == ["000000010", "000000011", "000000012"]
    with pytest.raises(ValueError, match=r"split='test': accepted are \['train', 'held_out'\]"):
        SceneWorld(split="test")
