"""Evaluation prompts: one caption for each of N distinct images, chosen by a documented rule.

The paper's prompts are the 30,000-row ``metadata.csv`` (``file_name,text``) the BK-SDM authors released:
given that csv and ``num_images`` 30,000 (or null), every row is taken in file order, so the prompts are
exactly the paper's. From a ``file_name,text`` csv in general: the first caption of each file, in file
order, spread as below when fewer are asked for.

From COCO's ``captions_val2014.json``, bksdm's own approximation of the authors' selection: images
sorted by image id; each image's caption is its annotation with the lowest annotation id; ``num_images``
images are taken evenly spread over the whole sorted split (index ``i * total // num_images`` for
i = 0 .. num_images-1), so 30,000 of val2014's 40,504 images cover the split rather than its beginning.
Its images and captions are not the authors' 30,000, so its FID is close to, not equal to, the paper's.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path


def spread(items: list, count: int | None, source: str = "the prompts") -> list:
    """``count`` items evenly spread over ``items`` (all of them when count is None). More than there are
    is an error: silently fewer images would not be the protocol asked for."""
    if count is None or count == len(items):
        return list(items)
    if count < 1:
        raise ValueError(f"num_images={count!r} must be >= 1")
    if count > len(items):
        raise ValueError(
            f"num_images={count} but {source} holds {len(items)} captions: set num_images={len(items)} "
            "or lower (or num_images=null: every caption once)"
        )
    return [items[i * len(items) // count] for i in range(count)]


def prompt_rule(path: str | Path) -> str:
    """How ``load_prompts`` picks from ``path``, as results record it."""
    if Path(path).suffix == ".json":
        return "COCO captions json: bksdm's approximation (images by id, evenly spread, lowest-id caption)"
    return "file_name,text csv: its rows in file order (the authors' metadata.csv: the paper's prompts)"


def load_prompts(path: str | Path, num_images: int | None = None) -> list[tuple[str, str]]:
    """(image file name, caption) pairs from a COCO captions json or a ``file_name,text`` csv."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"prompts file {str(path)!r} does not exist: give COCO's captions_val2014.json or a csv with "
            "columns file_name,text"
        )
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        names = {image["id"]: image["file_name"] for image in data["images"]}
        first: dict[int, tuple[int, str]] = {}
        for note in data["annotations"]:
            if note["image_id"] not in first or note["id"] < first[note["image_id"]][0]:
                first[note["image_id"]] = (note["id"], note["caption"].strip())
        pairs = [(names[image_id], first[image_id][1]) for image_id in sorted(first)]
    else:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not {"file_name", "text"} <= set(reader.fieldnames or []):
                raise ValueError(f"{path} has columns {reader.fieldnames}: expected file_name,text")
            seen: dict[str, str] = {}
            for row in reader:
                seen.setdefault(row["file_name"], row["text"].strip())
        pairs = list(seen.items())
    if not pairs:
        raise ValueError(f"{path} holds no captions")
    return spread(pairs, num_images, str(path))
