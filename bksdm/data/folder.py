"""The reference layout: a folder of images with ``metadata.csv`` (``file_name,text``), or images with a
``.txt`` caption file of the same name beside each."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from bksdm.data.sampler import item_key
from bksdm.data.skips import skip
from bksdm.data.transforms import ImageTransform, open_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def list_captioned_images(root: str | Path) -> list[tuple[Path, str | None]]:
    """(image path, caption or None) for every sample of the folder, bad ones included.

    ``metadata.csv`` wins when present; otherwise every image file (searched recursively) takes the
    caption in ``<stem>.txt`` beside it (None when that file is missing).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"data.root={str(root)!r} is not a folder: expected images with metadata.csv (columns "
            "file_name,text) or with a .txt caption file beside each image"
        )
    metadata = root / "metadata.csv"
    if metadata.is_file():
        with metadata.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not {"file_name", "text"} <= set(reader.fieldnames or []):
                raise ValueError(f"{metadata} has columns {reader.fieldnames}: expected file_name,text")
            items = [(root / row["file_name"], row["text"]) for row in reader]
    else:
        images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        items = []
        for image in images:
            caption_file = image.with_suffix(".txt")
            items.append(
                (image, caption_file.read_text(encoding="utf-8") if caption_file.is_file() else None)
            )
    if not items:
        raise ValueError(
            f"data.root={str(root)!r} holds no samples: expected metadata.csv rows or image files "
            f"({', '.join(IMAGE_SUFFIXES)}) with .txt captions"
        )
    if not any(caption and caption.strip() for _, caption in items):
        raise ValueError(
            f"data.root={str(root)!r} holds {len(items)} images but not one caption: expected metadata.csv "
            "(columns file_name,text) or a .txt file beside each image (a.jpg + a.txt)"
        )
    return items


class CaptionedImageFolder(Dataset):
    """Captioned images of a folder (see ``list_captioned_images``) as training samples.

    Item: ``{"pixel_values": (3, resolution, resolution) in [-1, 1], "caption": str}`` with the crop's
    ``original_size`` and ``crop_top_left`` (``ImageTransform.sample``), or a skip marker
    for a missing, unreadable, truncated or too small image, or a missing or empty caption.
    """

    def __init__(
        self,
        root: str | Path,
        resolution: int = 512,
        center_crop: bool = True,
        random_flip: bool = True,
        min_size: int = 0,
    ):
        self.root = Path(root)
        self.items = list_captioned_images(root)
        self.transform = ImageTransform(resolution, center_crop=center_crop, random_flip=random_flip)
        self.min_size = min_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, sample_seed = item_key(key)
        sample = read_sample(*self.items[index], self.min_size)
        if isinstance(sample, dict):
            return sample
        _, image, caption = sample
        if sample_seed is None:
            return {**self.transform.sample(image), "caption": caption}
        return {
            **self.transform.sample(image, random.Random(sample_seed)),
            "caption": caption,
            "sample_seed": sample_seed,
        }


def read_sample(path: Path, caption: str | None, min_size: int = 0) -> tuple[bytes, Image.Image, str] | dict:
    """(encoded bytes, decoded image, stripped caption) of one folder sample, or a skip marker for a
    missing or empty caption, a missing, unreadable, truncated or too small image."""
    if caption is None:
        return skip("missing_caption")
    if not caption.strip():
        return skip("empty_caption")
    if not path.is_file():
        return skip("missing_image")
    data = path.read_bytes()
    image = open_image(data)
    if isinstance(image, dict):
        return image
    if min(image.size) < min_size:
        return skip("too_small")
    return data, image, caption.strip()
