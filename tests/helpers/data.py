"""Training data on disk as bksdm reads it: a captioned image folder and img2dataset-like webdataset shards,
each with one bad sample of every kind, and the skips they must count."""

import csv
import io
import json
from collections import Counter

import numpy as np
import webdataset as wds
from PIL import Image


def picture(mode="RGB", size=(160, 120), seed=0) -> Image.Image:
    array = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(array).convert(mode)


def write_folder(root, good=8, with_bad=True, layout="metadata"):
    """``good`` usable images in assorted modes and formats, plus one bad sample of each kind."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    modes = [
        ("RGB", "jpg"),
        ("L", "png"),
        ("P", "png"),
        ("CMYK", "jpg"),
        ("RGBA", "png"),
        ("LA", "png"),
        ("RGB", "webp"),
    ]
    for i in range(good):
        mode, suffix = modes[i % len(modes)]
        picture(mode, seed=i).save(root / f"good{i}.{suffix}")
        rows.append((f"good{i}.{suffix}", f"picture number {i}"))
    expected = Counter()
    if with_bad:
        picture().save(root / "truncated.jpg")
        data = (root / "truncated.jpg").read_bytes()
        (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
        (root / "garbage.jpg").write_bytes(b"this is not an image")
        picture(size=(40, 30)).save(root / "small.png")
        picture().save(root / "empty_caption.png")
        rows += [
            ("truncated.jpg", "cut short"),
            ("garbage.jpg", "noise"),
            ("small.png", "too small"),
            ("empty_caption.png", "  "),
        ]
        expected.update(["truncated_image", "unreadable_image", "too_small", "empty_caption"])
        if layout == "metadata":
            rows.append(("missing.png", "listed but absent"))
            expected.update(["missing_image"])
        else:
            picture().save(root / "no_caption.png")
            expected.update(["missing_caption"])
    if layout == "metadata":
        with (root / "metadata.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file_name", "text"])
            writer.writerows(rows)
    else:
        for file_name, text in rows:
            (root / file_name).with_suffix(".txt").write_text(text)
    return expected


def encoded(fmt="JPEG", size=(96, 80), seed=0) -> bytes:
    array = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def write_shards(folder, shards=3, per_shard=6, bad=True, truncate_last=False):
    """img2dataset-like shards; with ``bad``, shard 0 also holds one bad member of each decodable kind and
    one more shard is not a tar file at all (one broken member)."""
    folder.mkdir(parents=True, exist_ok=True)
    expected, keys = Counter(), []
    for s in range(shards):
        path = folder / f"{s:05d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                fmt, ext = [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")][i % 3]
                sink.write(
                    {
                        "__key__": key,
                        ext: encoded(fmt, seed=s * 100 + i),
                        "txt": f"sample {key}",
                        "json": json.dumps({"url": f"http://x/{key}"}),
                    }
                )
                keys.append(key)
            if bad and s == 0:
                sink.write({"__key__": "bad_image", "jpg": b"garbage", "txt": "x"})
                sink.write({"__key__": "no_caption", "jpg": encoded()})
                sink.write({"__key__": "empty_caption", "jpg": encoded(), "txt": " "})
                sink.write({"__key__": "too_small", "png": encoded("PNG", size=(20, 20)), "txt": "tiny"})
                expected.update(["unreadable_image", "missing_caption", "empty_caption", "too_small"])
        if truncate_last and s == shards - 1:
            data = path.read_bytes()
            path.write_bytes(data[: len(data) * 2 // 3])
    if bad:
        (folder / f"{shards:05d}.tar").write_bytes(b"not a tar file" * 100)
        expected["unreadable_shard"] += 1
    return expected, keys
