"""Bad samples: skipped, counted by kind, never fatal and never silent.

A dataset hands out a *skip marker* (``{"skipped": kind}``) where a sample cannot be used; the collate
function drops markers and returns their counts with the batch, so counts made in loader workers reach
the training process exactly (each bad sample once per time it is met). A source that yields only markers
for ``data.max_consecutive_bad`` samples in a row, or for a whole epoch, stops the run with an error
instead of spinning, whether or not good samples came before (``SkipTally``).
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
    "unreadable_shard",
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
    process. ``failure`` says why the source must be given up on (None while it is fine): ``limit``
    samples in a row were bad, or an epoch ended without a good one. The caller decides when to raise
    it (``raise_failure``): under DDP every rank must stop at the same step."""

    def __init__(self, source: str = "the data source", limit: int = 256):
        if limit < 1:
            raise ValueError(f"data.max_consecutive_bad={limit!r} must be >= 1")
        self.source, self.limit = source, limit
        self.counts = torch.zeros(len(SKIP_KINDS), dtype=torch.long)
        self.good = 0
        self.streak = torch.zeros(len(SKIP_KINDS), dtype=torch.long)  # bad samples since the last good one
        self.epoch_counts = torch.zeros(len(SKIP_KINDS), dtype=torch.long)
        self.epoch_good = 0
        self.failure: str | None = None

    def add(self, skipped: torch.Tensor, good: int) -> None:
        """One batch's skipped counts and number of good samples (order within a batch is not kept, so a
        batch with a good sample ends a streak)."""
        self.counts += skipped
        self.epoch_counts += skipped
        self.good += good
        self.epoch_good += good
        self.streak = torch.zeros_like(self.streak) if good else self.streak + skipped
        if self.failure is None and int(self.streak.sum()) >= self.limit:
            self.failure = (
                f"{int(self.streak.sum())} samples in a row from {self.source} could not be used "
                f"({describe_skips(self.streak.tolist())}; data.max_consecutive_bad={self.limit}), after "
                f"{self.good} good ones: check the path and the data"
            )

    def end_epoch(self) -> None:
        """Call at the end of every epoch: one without a good sample (and with bad ones) is a failure."""
        if self.failure is None and self.epoch_good == 0 and int(self.epoch_counts.sum()):
            self.failure = (
                f"a whole epoch of {self.source} gave no usable sample ({describe_skips(self.epoch_counts.tolist())}): "
                "check the path and the data"
            )
        self.epoch_counts = torch.zeros_like(self.epoch_counts)
        self.epoch_good = 0

    def raise_failure(self, failure: str | None = None) -> None:
        """Raise UnreadableSource with this tally's failure (or, when another rank failed, ``failure``)."""
        if self.failure or failure:
            raise UnreadableSource(self.failure or failure)


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
