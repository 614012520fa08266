"""The shipped mini worlds' teachers and classifiers (``bksdm/miniworld/assets``: the 64 px world at the top,
the relational one in ``scenes/`` once shipped), and loading a built one."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from bksdm.miniworld.models import AttributeClassifier
from bksdm.miniworld.worlds import WorldKind, world_kind

ASSETS = Path(__file__).resolve().parent / "assets"
# the built folders shipped with the package, by the name a teacher source or a world setting gives them
SHIPPED = {"builtin:miniworld": ASSETS, "builtin:miniworld-scenes": ASSETS / "scenes"}


def world_folder(world: str | Path | None = None) -> Path:
    """The folder of a built mini world: ``world`` itself, or a shipped world by its ``SHIPPED`` name
    (None: ``builtin:miniworld``, the 64 px world)."""
    name = "builtin:miniworld" if world is None else str(world)
    if not name.startswith("builtin:"):
        return Path(world)
    if name not in SHIPPED:
        raise ValueError(
            f"world={name!r}: accepted are a built mini world's folder or one of {list(SHIPPED)}"
        )
    folder = SHIPPED[name]
    if not (folder / "report.json").is_file():
        raise FileNotFoundError(
            f"{name} is not shipped with this version of bksdm: build it with `python -m bksdm.miniworld "
            "world=scenes` and name its folder instead (teacher.world_dir=outputs/miniworld/scenes-seed0)"
        )
    return folder


def teacher_path(folder: str | Path = ASSETS) -> Path:
    """The teacher pipeline folder of a built mini world (``builtin:miniworld``: the shipped one)."""
    path = Path(folder) / "teacher"
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no mini-world teacher in {str(folder)!r} (expected teacher/model_index.json); "
            "build one with `python -m bksdm.miniworld out=<folder>`"
        )
    return path


def load_classifier(folder: str | Path = ASSETS) -> AttributeClassifier:
    """The attribute classifier of a built mini world, in float32, in eval mode."""
    folder = Path(folder)
    weights = folder / "classifier.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(
            f"no mini-world classifier in {str(folder)!r} (expected classifier.safetensors); "
            "build one with `python -m bksdm.miniworld out=<folder>`"
        )
    classifier = AttributeClassifier(**json.loads((folder / "classifier.json").read_text()))
    classifier.load_state_dict({k: v.float() for k, v in load_file(weights).items()})
    return classifier.eval().requires_grad_(False)


def world_of(folder: str | Path = ASSETS) -> WorldKind:
    """The world a built folder's teacher and classifier belong to: its ``report.json``'s ``world`` (builds
    from before the relational world have none, and are of the 64 px one)."""
    report = Path(folder) / "report.json"
    if not report.is_file():
        raise FileNotFoundError(
            f"no mini-world report in {str(folder)!r} (expected report.json); "
            "build one with `python -m bksdm.miniworld out=<folder>`"
        )
    return world_kind(json.loads(report.read_text()).get("world", "single"))
