"""Image folders, transforms and bad samples: skipped, counted exactly, never fatal, never silent."""

import functools
import random
from collections import Counter

import pytest
import torch
from helpers.data import write_folder
from helpers.trainer import cpu_trainer
from PIL import Image

from bksdm.data.datamodule import FolderDataModule
from bksdm.data.folder import CaptionedImageFolder
from bksdm.data.skips import (
    SKIP_KINDS,
    SkipTally,
    UnreadableSource,
    collate_skipping,
    describe_skips,
    is_skip,
)
from bksdm.data.transforms import ImageTransform
from bksdm.distill.losses import DistillLoss
from bksdm.distill.module import DistillModule


@pytest.mark.parametrize("layout", ["metadata", "txt"])
def test_every_bad_sample_is_a_counted_skip_and_every_good_one_a_sample(tmp_path, layout):
    expected = write_folder(tmp_path / "data", layout=layout)
    dataset = CaptionedImageFolder(tmp_path / "data", resolution=64, min_size=64)
    items = [dataset[i] for i in range(len(dataset))]
    assert Counter(item["skipped"] for item in items if is_skip(item)) == expected
    good = [item for item in items if not is_skip(item)]
    assert len(good) == 8
    for item in good:
        assert item["pixel_values"].shape == (3, 64, 64) and item["pixel_values"].dtype == torch.float32
        assert item["pixel_values"].min() >= -1.0 and item["pixel_values"].max() <= 1.0
        assert item["caption"].startswith("picture number")


def test_transform_resizes_the_shorter_side_crops_and_flips():
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 100, 100))  # left half blue
    centre = ImageTransform(64, center_crop=True, random_flip=False)(image)
    assert centre.shape == (3, 64, 64)
    # centre crop of the 128x64 resize covers x in [32, 96): left half blue, right half red
    assert centre[2, 32, 5] == 1.0 and centre[0, 32, 60] == 1.0
    flipped = ImageTransform(64, center_crop=True, random_flip=True)(
        image, rng=type("R", (), {"random": lambda self: 0.0})()
    )
    torch.testing.assert_close(flipped, centre.flip(-1))
    transparent = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    assert ImageTransform(64, random_flip=False)(transparent).min() == 1.0  # alpha composited on white
    with pytest.raises(ValueError, match="resolution=100 must be a positive multiple of 8"):
        ImageTransform(100)


def test_the_transform_records_where_each_crop_came_from_as_sdxls_training_script_does():
    image = Image.new("RGB", (300, 100))  # resized to 192 x 64: 128 spare pixels across
    random_crop = ImageTransform(64, center_crop=False, random_flip=False)
    sample = random_crop.sample(image, rng=random.Random(3))
    left = random.Random(3).randint(0, 128)
    assert sample["original_size"].tolist() == [100, 300] and sample["crop_top_left"].tolist() == [0, left]
    # a mirrored crop's offset is measured in the mirrored image (diffusers flips before it crops)
    mirrored = random_crop.sample(image, rng=random.Random(3), flip=True)
    assert mirrored["crop_top_left"].tolist() == [0, 128 - left]
    torch.testing.assert_close(mirrored["pixel_values"], sample["pixel_values"].flip(-1))
    centre = ImageTransform(64).sample(Image.new("RGB", (64, 90)), flip=False)
    assert centre["original_size"].tolist() == [90, 64] and centre["crop_top_left"].tolist() == [13, 0]


def test_collate_drops_markers_and_counts_them_by_kind():
    good = {"pixel_values": torch.zeros(3, 8, 8), "caption": "a"}
    batch = collate_skipping(
        [good, {"skipped": "too_small"}, good, {"skipped": "too_small"}, {"skipped": "empty_caption"}]
    )
    assert batch["pixel_values"].shape == (2, 3, 8, 8) and batch["caption"] == ["a", "a"]
    assert describe_skips(batch["skipped"].tolist()) == "3 skipped: 2 too_small, 1 empty_caption"
    assert collate_skipping([{"skipped": "too_small"}]).keys() == {"skipped"}


def counts(**by_kind) -> torch.Tensor:
    return torch.tensor([by_kind.get(kind, 0) for kind in SKIP_KINDS])


def test_a_streak_of_bad_samples_fails_the_source_whether_or_not_good_ones_came_before():
    tally = SkipTally("data.root='/x'", limit=4)
    tally.add(counts(unreadable_image=3), good=0)
    assert tally.failure is None
    tally.add(counts(unreadable_image=1), good=0)
    with pytest.raises(
        UnreadableSource,
        match=r"4 samples in a row from data.root='/x' could not be used \(4 skipped: 4 unreadable_image; "
        r"data.max_consecutive_bad=4\), after 0 good ones",
    ):
        tally.raise_failure()
    later = SkipTally(limit=4)
    later.add(counts(too_small=3), good=5)  # a good sample ends a streak
    later.add(counts(too_small=3), good=0)
    assert later.failure is None
    later.add(counts(empty_caption=1), good=0)
    assert "after 5 good ones" in later.failure and "3 too_small, 1 empty_caption" in later.failure


def test_an_epoch_without_a_good_sample_fails_the_source():
    tally = SkipTally(limit=100)
    tally.add(counts(too_small=2), good=3)
    tally.end_epoch()
    assert tally.failure is None
    tally.add(counts(too_small=2), good=0)
    tally.end_epoch()
    assert tally.failure.startswith("a whole epoch of the data source gave no usable sample (2 skipped")


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.root='.*nowhere' is not a folder"):
        CaptionedImageFolder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no samples"):
        CaptionedImageFolder(tmp_path / "empty")
    (tmp_path / "uncaptioned").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "uncaptioned" / "a.png")
    with pytest.raises(ValueError, match=r"holds 1 images but not one caption"):
        CaptionedImageFolder(tmp_path / "uncaptioned")
    (tmp_path / "bad_csv").mkdir()
    (tmp_path / "bad_csv" / "metadata.csv").write_text("image,caption\na.png,x\n")
    with pytest.raises(ValueError, match=r"columns \['image', 'caption'\]: expected file_name,text"):
        CaptionedImageFolder(tmp_path / "bad_csv")


def tiny_module() -> DistillModule:
    return DistillModule(
        teacher_source="builtin:toy",
        removal="small",
        taps=[],
        loss=DistillLoss(1.0, 1.0, 0.0),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-4),
    )


def fit_one_epoch(module, datamodule, tmp_path):
    trainer = cpu_trainer(tmp_path, max_epochs=1)
    trainer.fit(module, datamodule=datamodule)
    return trainer


def test_training_from_a_folder_with_bad_samples_counts_them_exactly(tmp_path, caplog):
    expected = write_folder(tmp_path / "data", good=9)  # 9 good + 5 bad = 14 = 2 batches of 7
    datamodule = FolderDataModule(
        str(tmp_path / "data"), resolution=128, batch_size=7, num_workers=2, min_size=64
    )
    module = tiny_module()
    trainer = fit_one_epoch(module, datamodule, tmp_path)
    assert trainer.global_step == 2
    assert dict(zip(SKIP_KINDS, module.skips.counts.tolist(), strict=True)) == {
        k: expected.get(k, 0) for k in SKIP_KINDS
    }
    assert module.skips.good == 9
    assert "data: 5 skipped:" in caplog.text


def test_training_on_an_unreadable_folder_stops_instead_of_spinning(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for i in range(6):
        (root / f"{i}.jpg").write_bytes(b"not a jpeg")
        (root / f"{i}.txt").write_text("a caption")
    datamodule = FolderDataModule(str(root), resolution=128, batch_size=2, num_workers=0)
    with pytest.raises(
        UnreadableSource,
        match=r"a whole epoch of data\.root=.* gave no usable sample \(6 skipped: 6 unreadable_image",
    ):
        fit_one_epoch(tiny_module(), datamodule, tmp_path)


def test_loader_throughput_is_measured_in_usable_images_per_second(tmp_path):
    from bksdm.data.throughput import loader_images_per_second

    write_folder(tmp_path / "data", good=12)  # 12 good + 5 bad; skipped samples do not count
    rate = loader_images_per_second(
        FolderDataModule(str(tmp_path / "data"), 64, batch_size=4, num_workers=0), batches=2, warmup=1
    )
    assert rate > 0
