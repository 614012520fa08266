"""A pipeline's own sampling defaults: ``sampling.json`` beside ``model_index.json``.

Stable Diffusion is drawn with guidance 7.5, which wrecks the images of a model trained for another scale
(the mini-world teacher and its students want 3). So the pipeline folders bksdm writes (the shipped
mini-world teacher, every exported student) carry the guidance scale and step count they are meant to be
drawn with, and ``generate``/``evaluate`` use them when ``guidance_scale``/``num_inference_steps`` are
null. diffusers loads pipeline folders by ``model_index.json`` and ignores files it does not know, so the
folders stay plain diffusers pipelines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

SAMPLING_FILE = "sampling.json"
# Stable Diffusion's own: what a pipeline without a sampling.json is drawn with
SD_SAMPLING = {"guidance_scale": 7.5, "num_inference_steps": 25}


def check_sampling(values: Mapping, where: str = "sampling") -> dict:
    """``values`` (any of ``guidance_scale``, ``num_inference_steps``) as plain numbers, checked; errors
    start with ``where`` (the file or config node they come from) unless it is empty."""
    prefix = f"{where}: " if where else ""
    unknown = sorted(set(values) - set(SD_SAMPLING))
    if unknown:
        raise ValueError(f"{prefix}unknown key(s) {unknown}: accepted are {list(SD_SAMPLING)}")
    checked = {}
    if "guidance_scale" in values:
        scale = values["guidance_scale"]
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
            raise ValueError(
                f"{prefix}guidance_scale={scale!r}: accepted is a finite number (1 or less: no guidance)"
            )
        checked["guidance_scale"] = float(scale)
    if "num_inference_steps" in values:
        steps = values["num_inference_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"{prefix}num_inference_steps={steps!r}: accepted is a positive integer")
        checked["num_inference_steps"] = steps
    return checked


def write_sampling(folder: str | Path, values: Mapping) -> Path:
    """Write ``folder/sampling.json``: ``values`` over Stable Diffusion's defaults."""
    path = Path(folder) / SAMPLING_FILE
    path.write_text(json.dumps({**SD_SAMPLING, **check_sampling(values)}, indent=2) + "\n")
    return path


def _sampling_file(source: str, revision: str | None) -> Path | None:
    from bksdm.teachers.loading import resolve_source

    resolved = resolve_source(source)
    if Path(resolved).is_dir():
        path = Path(resolved) / SAMPLING_FILE
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(resolved, SAMPLING_FILE, revision=revision))
    except (EntryNotFoundError, OSError, ValueError):
        # no such file, not cached offline, or no such repository: loading the pipeline says which
        return None


def model_sampling(source: str, revision: str | None = None) -> tuple[dict, bool]:
    """The sampling defaults of the pipeline ``source`` (folder, hub id or ``builtin:<name>``): its
    ``sampling.json`` over Stable Diffusion's. The flag says whether it has a ``sampling.json``."""
    path = _sampling_file(source, revision)
    if path is None:
        return dict(SD_SAMPLING), False
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{str(path)!r} is not a readable JSON file: {error}") from error
    if not isinstance(stored, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object with {list(SD_SAMPLING)}")
    return {**SD_SAMPLING, **check_sampling(stored, str(path))}, True


def resolve_sampling(
    source: str, guidance_scale: float | None, num_inference_steps: int | None
) -> tuple[dict, str]:
    """The guidance scale and step count to draw ``source`` with: the values given, and for those that
    are None the model's own defaults (``model_sampling``). Also a line saying which came from where."""
    given = {
        key: value
        for key, value in (("guidance_scale", guidance_scale), ("num_inference_steps", num_inference_steps))
        if value is not None
    }
    values = check_sampling(given, "")
    stored, has_file = model_sampling(source) if len(values) < len(SD_SAMPLING) else ({}, False)
    origin = (
        f"{source}'s {SAMPLING_FILE}"
        if has_file
        else f"Stable Diffusion's default: no {SAMPLING_FILE} found for {source}"
    )
    parts = []
    for key in SD_SAMPLING:
        if key in values:
            parts.append(f"{key}={values[key]} (as set)")
        else:
            values[key] = stored[key]
            parts.append(f"{key}={values[key]} ({origin})")
    return {key: values[key] for key in SD_SAMPLING}, ", ".join(parts)
