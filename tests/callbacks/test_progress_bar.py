"""The training bar counts the run's optimizer steps, with accumulation, and continues after a resume."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from bksdm.callbacks.progress_bar import StepProgressBar


class Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        loss = self.layer(x).pow(2).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path, max_steps, ckpt_path=None, bar=None):
    """20 batches an epoch, 2 per optimizer step: 10 steps an epoch; a checkpoint at step 4."""
    checkpoint = ModelCheckpoint(tmp_path, "{step}", every_n_train_steps=4, save_top_k=-1)
    trainer = L.Trainer(
        max_steps=max_steps, max_epochs=-1, accumulate_grad_batches=2, callbacks=[bar or StepProgressBar(), checkpoint],
        logger=False, enable_model_summary=False, log_every_n_steps=1,
    )  # fmt: skip
    loader = DataLoader(TensorDataset(torch.randn(20, 2)), batch_size=1)
    trainer.fit(Regression(), loader, ckpt_path=ckpt_path)
    return trainer


def drawn(capsys) -> list[str]:
    """The bar's states as drawn, one per redraw."""
    return [line.strip() for line in capsys.readouterr().out.split("\r") if line.strip()]


@pytest.mark.filterwarnings(
    "ignore:.*(bottleneck|number of training batches|exists and is not empty|resuming from a checkpoint)"
)
def test_the_bar_counts_optimizer_steps_and_a_resumed_run_continues_from_its_step(tmp_path, capsys):
    fit(tmp_path, max_steps=6)
    first = drawn(capsys)
    assert first[0].startswith("Epoch 0:   0%") and "0/6" in first[0]  # named and totalled from the start
    assert "6/6" in first[-1] and "train/loss=" in first[-1] and "step/s" in first[-1]
    assert not any("/12" in line or "?" in line.split("[")[0] for line in first)  # steps, not batches

    fit(tmp_path, max_steps=14, ckpt_path=tmp_path / "step=4.ckpt")  # 8 of the epoch's 20 batches done
    resumed = drawn(capsys)
    # Lightning's own bar: "Training: 8/?" until the next epoch; this one starts at the checkpoint's step
    assert resumed[0].startswith("Epoch 0:  29%") and "4/14" in resumed[0]
    assert any(line.startswith("Epoch 1:") for line in resumed)  # the epoch shows as it changes
    assert "14/14" in resumed[-1]
    assert not any("Training" in line for line in first + resumed)


def test_a_bar_can_be_named_and_refreshed_every_few_steps(tmp_path, capsys):
    fit(tmp_path, max_steps=6, bar=StepProgressBar(refresh_rate=3, description="teacher"))
    lines = drawn(capsys)
    assert all(line.startswith("teacher:") for line in lines)
    assert {line.split("|")[2].split("[")[0].strip() for line in lines} == {"0/6", "3/6", "6/6"}
