"""Bad samples: skipped, counted by kind, never fatal and never silent.

A dataset hands out a *skip marker* (``{"skipped": kind}``) where a sample cannot be used; the collate
function drops markers and returns their counts with the batch, so counts made in loader workers reach
the training process exactly (each bad sample once per time it is met). A source that yields nothing but
markers stops with an error instead of spinning (``SkipTally``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch.utils.data import default_collate

SKIP_KINDS = (
    "missing_image",
    "unreadable_image",
    "truncated_image",
    "too_small",
    "missing_caption",
    "empty_caption",
    "broken_member",
)


def skip(kind: str) -> dict:
    """A skip marker for one bad sample."""
    if kind not in SKIP_KINDS:
        raise ValueError(f"unknown skip kind {kind!r}: accepted are {list(SKIP_KINDS)}")
    return {"skipped": kind}


def is_skip(item) -> bool:
    return isinstance(item, dict) and "skipped" in item


class UnreadableSource(RuntimeError):
    """Nothing usable came out of a data source."""


class SkipTally:
    """Skipped samples by kind (a (len(SKIP_KINDS),) tensor) and good samples seen, in the training
    process. ``add`` raises UnreadableSource once ``limit`` samples were skipped before any good one."""

    def __init__(self, source: str = "the data source", limit: int = 256):
        self.source, self.limit = source, limit
        self.counts = torch.zeros(len(SKIP_KINDS), dtype=torch.long)
        self.good = 0

    def add(self, skipped: torch.Tensor, good: int) -> None:
        self.counts += skipped
        self.good += good
        self.check(self.limit)

    def check(self, limit: int = 1) -> None:
        """Raise if at least ``limit`` samples were skipped and none was good (``limit=1`` at an epoch end)."""
        if self.good == 0 and int(self.counts.sum()) >= limit:
            raise UnreadableSource(
                f"no usable sample in {int(self.counts.sum())} read from {self.source} "
                f"({describe_skips(self.counts.tolist())}): check the path and the data"
            )


def collate_skipping(items: Sequence[dict]) -> dict:
    """Collate the good samples; ``batch["skipped"]`` is a (len(SKIP_KINDS),) count of dropped ones."""
    good = [item for item in items if not is_skip(item)]
    counts = Counter(item["skipped"] for item in items if is_skip(item))
    batch = default_collate(good) if good else {}
    batch["skipped"] = torch.tensor([counts.get(kind, 0) for kind in SKIP_KINDS], dtype=torch.long)
    return batch


def describe_skips(counts: Sequence[int]) -> str:
    """``"3 skipped: 2 unreadable_image, 1 empty_caption"`` or ``"no sample skipped"``."""
    total = int(sum(counts))
    if not total:
        return "no sample skipped"
    parts = [f"{int(n)} {kind}" for kind, n in zip(SKIP_KINDS, counts, strict=True) if n]
    return f"{total} skipped: " + ", ".join(parts)
