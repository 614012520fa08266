"""An evaluation's result in a W&B run (``python -m bksdm.evaluate ... wandb.mode=online|offline``): the
scores as the run's summary, the settings as its config, and a table of the first images with their
captions and CLIP scores, beside the training runs of the same project."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bksdm.eval.protocols import PER_IMAGE_FILE


def scalar_scores(result: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a result (scores and counts), as a W&B summary takes them."""
    return {k: v for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def log_result(settings: Mapping[str, Any], result: Mapping[str, Any], out: Path) -> str | None:
    """Logs ``result`` (as ``metrics.json`` holds it) to a new W&B run of job type ``evaluate``;
    ``settings``: the ``wandb`` node of the evaluate config. Returns the run's folder, None when
    ``settings["mode"]`` is null (no run)."""
    if settings.get("mode") is None:
        return None
    import wandb

    folder = Path(settings["dir"])
    folder.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=settings["project"], entity=settings.get("entity"), mode=settings["mode"], dir=str(folder),
        name=settings.get("name") or f"evaluate-{Path(str(result['model'])).name}", job_type="evaluate",
        tags=[f"eval:{result['protocol']}"], config=dict(result.get("settings", {})),
    )  # fmt: skip
    run.summary.update(scalar_scores(result))
    per_image = out / PER_IMAGE_FILE
    if settings.get("table_images") and per_image.is_file():
        with per_image.open(newline="", encoding="utf-8") as handle:
            rows = [
                row for _, row in zip(range(settings["table_images"]), csv.DictReader(handle), strict=False)
            ]
        table = wandb.Table(
            columns=["index", "caption", "image", "clip"],
            data=[
                [
                    int(r["index"]),
                    r["caption"],
                    wandb.Image(str(out / "images" / r["image"])),
                    float(r["clip"]),
                ]
                for r in rows
            ],
        )
        run.log({"eval/samples": table})
    run.finish()
    return run.settings.sync_dir
