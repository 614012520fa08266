"""The checkout's root and its Hydra config (the top-level conf/), and the shipped teacher presets in it."""

from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def teacher_preset(name: str) -> dict:
    """The U-Net config embedded in a shipped teacher preset."""
    return OmegaConf.to_container(OmegaConf.load(CONF / "teacher" / f"{name}.yaml").unet_config)


def arch_removal(name: str) -> dict:
    """The removal spec of a shipped arch config (``conf/arch/<name>.yaml``)."""
    return OmegaConf.to_container(OmegaConf.load(CONF / "arch" / f"{name}.yaml").removal)
