"""A tiny relational mini world (world=scenes) as ``python -m bksdm.miniworld`` builds it: seconds on a CPU."""

from pathlib import Path

from hydra import compose, initialize_config_dir

from helpers.paths import CONF


def scenes_overrides(folder: Path, *overrides: str) -> list[str]:
    """``python -m bksdm.miniworld world=scenes``'s overrides (after ``world=scenes``) for a tiny world:
    ``folder/world`` (the built world), ``folder/work``."""
    return [
        f"out={folder / 'world'}", f"work_dir={folder / 'work'}", "pool.train=64", "pool.held_out=8",
        "vae.steps=2", "teacher.batch_size=8", "teacher.block_out_channels=[16,32,32,32]",
        "checkpoint_every_n_steps=5", "classifier.steps=2", "classifier.round_trips=8",
        "classifier.held_out_split_items=8", "report.captions=2", "report.num_inference_steps=1",
        "report.mid_block_items=4", "log_every_n_steps=1", "save_dtype=float32", *overrides,
    ]  # fmt: skip


def scenes_config(folder: Path, *overrides: str):
    """The build's config for a tiny scenes world (``scenes_overrides``)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("miniworld", overrides=["world=scenes", *scenes_overrides(folder, *overrides)])
