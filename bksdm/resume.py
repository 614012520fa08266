"""Where a run continues from: the newest checkpoint of its folder, and the W&B run it logs into."""

from __future__ import annotations

import secrets
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig


def checkpoint_to_resume(cfg: DictConfig, output_dir: Path) -> Path | None:
    """``ckpt_path=<file>``, or with ``resume=auto`` the newest checkpoint of the run folder (periodic,
    ``last.ckpt``, or one written at preemption); None for a fresh start."""
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path)
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={str(path)!r} does not exist: give a checkpoint file")
        return path
    resume = cfg.get("resume")
    if resume in (None, False):
        return None
    if resume != "auto":
        raise ValueError(
            f"resume={resume!r}: accepted are auto (the newest checkpoint of the run folder) or null"
        )
    found = [*(output_dir / "checkpoints").glob("*.ckpt"), *output_dir.glob("hpc_ckpt_*.ckpt")]
    if not found:
        rank_zero_info(f"resume=auto: no checkpoint in {output_dir}, starting from the beginning")
        return None
    return max(found, key=lambda path: path.stat().st_mtime_ns)


def wandb_run_id(output_dir: Path) -> str:
    """The run folder's W&B run id, made on its first start: a resumed run logs into the same W&B run."""
    record = output_dir / "wandb_run_id"
    if record.is_file():
        return record.read_text().strip()
    run_id = secrets.token_hex(4)  # W&B's own ids are 8 lowercase letters and digits too
    output_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(run_id + "\n")
    return run_id
