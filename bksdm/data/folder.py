"""The reference layout: a folder of images with ``metadata.csv`` (columns ``file_name,text``)."""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from bksdm.data.transforms import ImageTransform


def metadata_path(root: str | Path) -> Path:
    """``<root>/metadata.csv``, or FileNotFoundError naming ``data.root`` and the expected layout."""
    metadata = Path(root) / "metadata.csv"
    if not metadata.is_file():
        raise FileNotFoundError(
            f"data.root={str(root)!r} has no metadata.csv: expected an image folder with a metadata.csv "
            "whose columns are file_name,text"
        )
    return metadata


class CaptionedImageFolder(Dataset):
    """Images listed in ``<root>/metadata.csv`` with their captions, as the paper's LAION subset is stored."""

    def __init__(
        self, root: str | Path, resolution: int = 512, center_crop: bool = True, random_flip: bool = True
    ):
        self.root = Path(root)
        metadata = metadata_path(root)
        with metadata.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not {"file_name", "text"} <= set(reader.fieldnames or []):
                raise ValueError(f"{metadata} has columns {reader.fieldnames}: expected file_name,text")
            self.items = [(row["file_name"], row["text"]) for row in reader]
        if not self.items:
            raise ValueError(f"{metadata} lists no images")
        self.transform = ImageTransform(resolution, center_crop=center_crop, random_flip=random_flip)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        file_name, caption = self.items[index]
        with Image.open(self.root / file_name) as image:
            return {"pixel_values": self.transform(image), "caption": caption}
