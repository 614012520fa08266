"""Evaluation inputs: a COCO-style captions file and a folder of real images."""

import json

import numpy as np
from PIL import Image


def coco_json(path, count=12):
    images = [{"id": 1000 - i, "file_name": f"COCO_val2014_{1000 - i:012d}.jpg"} for i in range(count)]
    notes = []
    for image in images:
        notes += [
            {
                "id": 5000 + image["id"],
                "image_id": image["id"],
                "caption": f"second caption of {image['id']}",
            },
            {"id": image["id"], "image_id": image["id"], "caption": f" first caption of {image['id']} "},
        ]
    path.write_text(json.dumps({"images": images, "annotations": notes}))
    return path


def write_real(folder, count=12):
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(count):
        small = rng.integers(0, 255, (8, 10, 3), dtype=np.uint8)
        Image.fromarray(small).resize((320, 256), Image.Resampling.BICUBIC).save(folder / f"{i}.jpg")
