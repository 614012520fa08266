"""trainer=fsdp's pieces that need no process group: settings, staged sharded saves, safe loads, resume
from sharded folders. Training, sharded checkpoints and their resume on two CPU processes are in
test_train.py (the DDP/FSDP equality test)."""

import os

import lightning as L
import pytest
import torch
from helpers.train_config import FAST, config
from lightning.pytorch.strategies import FSDPStrategy
from omegaconf import OmegaConf

from bksdm import train as train_app
from bksdm.cli.errors import ConfigError
from bksdm.training.fsdp import DistillFSDPStrategy, gradient_shard_group, whole_module
from bksdm.training.resume import checkpoint_to_resume


def fake_sharded_save(written: list):
    """Stands in for Lightning's sharded save: a folder with one shard per rank and meta.pt."""

    def save(self, checkpoint, filepath, storage_options=None):
        filepath.mkdir(parents=True, exist_ok=True)
        (filepath / "__0_0.distcp").write_bytes(b"shard")
        if checkpoint.get("dies"):
            raise KeyboardInterrupt  # killed after the first shard, before meta.pt
        torch.save(checkpoint, filepath / "meta.pt")
        written.append(filepath)

    return save


def test_sharded_checkpoints_are_staged_so_a_kill_mid_save_keeps_the_previous_one(tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(FSDPStrategy, "save_checkpoint", fake_sharded_save(written))
    strategy, target = DistillFSDPStrategy(), tmp_path / "last.ckpt"
    strategy.save_checkpoint({"global_step": 4}, target)
    assert written == [tmp_path / ".last.ckpt.partial"]  # written aside, then renamed
    assert torch.load(target / "meta.pt")["global_step"] == 4
    with pytest.raises(KeyboardInterrupt):
        strategy.save_checkpoint({"global_step": 6, "dies": True}, target)
    assert torch.load(target / "meta.pt")["global_step"] == 4
    strategy.save_checkpoint({"global_step": 8}, target)  # the next save clears the half-written staging
    assert torch.load(target / "meta.pt")["global_step"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_resume_takes_the_newest_complete_sharded_folder(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    torch.save({}, checkpoints / "epoch=0-step=2.ckpt")
    (checkpoints / "epoch=0-step=4.ckpt").mkdir()
    torch.save({}, checkpoints / "epoch=0-step=4.ckpt" / "meta.pt")
    (checkpoints / "epoch=0-step=6.ckpt").mkdir()  # shards of a save that never finished: no meta.pt
    cfg = OmegaConf.create({"resume": "auto"})
    assert checkpoint_to_resume(cfg, tmp_path) == checkpoints / "epoch=0-step=4.ckpt"
    explicit = OmegaConf.create({"ckpt_path": str(checkpoints / "epoch=0-step=4.ckpt")})
    assert checkpoint_to_resume(explicit, tmp_path) == checkpoints / "epoch=0-step=4.ckpt"
    with pytest.raises(
        FileNotFoundError, match=r"ckpt_path='.*step=6\.ckpt' is neither a checkpoint file nor"
    ):
        checkpoint_to_resume(
            OmegaConf.create({"ckpt_path": str(checkpoints / "epoch=0-step=6.ckpt")}), tmp_path
        )


def test_full_fsdp_checkpoints_load_without_running_pickled_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"state_dict": {}, "evil": Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(Exception, match="Weights only load failed"):
        DistillFSDPStrategy(state_dict_type="full").load_checkpoint(tmp_path / "evil.ckpt")


def test_fsdp_settings_are_checked_when_the_trainer_is_built(tmp_path):
    with pytest.raises(ValueError, match=r"state_dict_type='shards': accepted are \('sharded', 'full'\)"):
        DistillFSDPStrategy(state_dict_type="shards")
    cfg = config(*FAST, "trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32",
                 "trainer.strategy.state_dict_type=full", output_dir=tmp_path)  # fmt: skip
    # raised inside the Trainer's instantiation, unwrapped from Hydra's exception: one clear message
    with pytest.raises(
        ConfigError,
        match=r"^trainer\.strategy\.state_dict_type=full cannot save on the CPU.*on the CPU: sharded",
    ):
        train_app.train(cfg)
    assert not (tmp_path / "config.yaml").exists()  # stopped before anything was loaded or written


def test_unsharded_modules_pass_through():
    model = torch.nn.Linear(2, 2)
    assert whole_module(model, rank0_only=True) is model
    assert gradient_shard_group(model) is None
    assert isinstance(L.Trainer(strategy=DistillFSDPStrategy(), accelerator="cpu", devices=2,
                                logger=False).strategy, DistillFSDPStrategy)  # fmt: skip
