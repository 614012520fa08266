"""Where a run continues from: the newest checkpoint of its folder, and the W&B run it logs into."""

from __future__ import annotations

import secrets
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig

SHARDED_METADATA = "meta.pt"  # Lightning's FSDPStrategy: the non-tensor state of a sharded checkpoint folder


def checkpoint_to_resume(cfg: DictConfig, output_dir: Path) -> Path | None:
    """``ckpt_path=<file or sharded folder>``, or with ``resume=auto`` the newest checkpoint of the run
    folder (periodic, ``last.ckpt``, or one written at preemption); None for a fresh start."""
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path)
        if not path.is_file() and not is_sharded_checkpoint(path):
            raise FileNotFoundError(
                f"ckpt_path={str(path)!r} is neither a checkpoint file nor a sharded checkpoint folder "
                f"(one holding {SHARDED_METADATA}, as trainer=fsdp writes)"
            )
        return path
    resume = cfg.get("resume")
    if resume in (None, False):
        return None
    if resume != "auto":
        raise ValueError(
            f"resume={resume!r}: accepted are auto (the newest checkpoint of the run folder) or null"
        )
    found = [*(output_dir / "checkpoints").glob("*.ckpt"), *output_dir.glob("hpc_ckpt_*.ckpt")]
    found = [path for path in found if path.is_file() or is_sharded_checkpoint(path)]
    if not found:
        rank_zero_info(f"resume=auto: no checkpoint in {output_dir}, starting from the beginning")
        return None
    # a sharded folder is complete once its metadata, written last, is there
    return max(
        found, key=lambda path: (path / SHARDED_METADATA if path.is_dir() else path).stat().st_mtime_ns
    )


def is_sharded_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / SHARDED_METADATA).is_file()


def wandb_run_id(output_dir: Path) -> str:
    """The run folder's W&B run id, made on its first start: a resumed run logs into the same W&B run."""
    record = output_dir / "wandb_run_id"
    if record.is_file():
        return record.read_text().strip()
    run_id = secrets.token_hex(4)  # W&B's own ids are 8 lowercase letters and digits too
    output_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(run_id + "\n")
    return run_id


def report_offline_parts(run) -> None:
    """After an offline W&B ``run`` finished: if it was resumed, says which folders hold its parts.

    W&B cannot resume an offline run (wandb/wandb#2423): each start writes an ``offline-run-<time>-<id>``
    folder of its own under the same id, and W&B's closing hint names only the newest."""
    if not run.offline:
        return
    parts = sorted(Path(run.settings.sync_dir).parent.glob(f"offline-run-*-{run.id}"))  # oldest first
    if len(parts) > 1:
        rank_zero_info(
            f"W&B offline run {run.id} is in {len(parts)} folders, one per start (W&B does not resume offline "
            f"runs); sync all of them, oldest first: wandb sync {' '.join(str(p) for p in parts)}"
        )
