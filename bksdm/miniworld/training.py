"""Training the mini-world teacher's VAE and U-Net, and the attribute classifier, with Lightning.

Each stage is a LightningModule over a pool of rendered images (uint8 in memory, so data costs nothing per
step): the VAE first (MSE + a small KL), then the U-Net on latents encoded once by the frozen VAE with text
embeddings computed once by the frozen text encoder (epsilon or SD-v2's v prediction, SD's DDPM schedule,
captions dropped for guidance), and the classifier on real images and VAE round trips (generated images are
VAE decodes, so it must read those as well as real ones).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_constant_schedule_with_warmup
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from bksdm.data.transforms import uint8_to_unit
from bksdm.distill.losses import ddpm_task_target
from bksdm.miniworld.models import AttributeClassifier
from bksdm.miniworld.world import MiniWorld
from bksdm.teachers.builtin import SD_SCHEDULER_CONFIG


class Pool:
    """Rendered items of a world (``WorldKind.items``): images (N, 3, R, R) uint8, labels (N, slots) and
    caption indices (N,) into ``captions`` (every caption of the world, in its fixed order)."""

    def __init__(self, items: MiniWorld, captions: Sequence[str]):
        first = items.picture(0)[0]  # filled in place: a list of the pictures would hold the pool twice
        self.images = torch.empty((len(items), *first.shape), dtype=torch.uint8)  # 2.5 GB at 50,000 x 128 px
        labels, self.captions = [], []
        for i in range(len(items)):
            self.images[i], text, label = items.picture(i)
            labels.append(label)
            self.captions.append(text)
        self.labels = torch.stack(labels)
        index = {text: i for i, text in enumerate(captions)}
        self.caption_index = torch.tensor([index[text] for text in self.captions])

    def __len__(self) -> int:
        return len(self.images)


class VAETraining(L.LightningModule):
    """MSE + ``kl_weight`` x KL on whole ``images`` (N, 3, R, R) uint8, or on a random ``crop`` x ``crop``
    window of each: the VAE is convolutional, so a 128 px world's VAE learns from 64 px windows at a quarter
    of the cost. Batches are ``ShuffledEpochBatches``'; crops and posterior samples come from the global
    generator, whose state its checkpoints keep, so a resumed run trains bit-identically to an unstopped
    one."""

    def __init__(
        self,
        vae: AutoencoderKL,
        images: torch.Tensor,
        lr: float,
        kl_weight: float,
        crop: int | None = None,
        lr_schedule: str = "constant",
    ):
        super().__init__()
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"vae.lr_schedule={lr_schedule!r}: accepted are {list(LR_SCHEDULES)}")
        self.vae, self.images, self.lr, self.kl_weight, self.crop = vae, images, lr, kl_weight, crop
        self.lr_schedule = lr_schedule

    def training_step(self, batch, batch_idx):
        _, indices = batch
        pixels = uint8_to_unit(self.images[indices].to(self.device))
        if self.crop is not None:
            pixels = random_crops(pixels, self.crop)
        posterior = self.vae.encode(pixels).latent_dist
        reconstruction = self.vae.decode(posterior.sample()).sample
        mse = F.mse_loss(reconstruction, pixels)
        loss = mse + self.kl_weight * posterior.kl().mean()
        self.log("vae/mse", mse, prog_bar=True)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.vae.parameters(), lr=self.lr)
        if self.lr_schedule == "constant":
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": cosine_schedule(optimizer, self.trainer.max_steps)}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["random_state"] = random_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        set_random_state(checkpoint["random_state"])


PREDICTION_TYPES = ("epsilon", "v_prediction")  # what the U-Net predicts: the noise, or SD-v2's velocity


class TeacherTraining(L.LightningModule):
    """Denoising training of the U-Net on a pool, predicting the noise or, with ``prediction_type``
    ``"v_prediction"``, SD-v2's velocity: ``latent_mean``/``latent_std`` (N, 4, h, w) are
    the frozen VAE's posterior of every pool image (sampled each step, as SD's training does),
    ``caption_index`` (N,) their captions; ``text_embeds`` (C + 1, T, D) the text encoder's output for every
    caption of the world and, last, the empty one. Batches are ``StepBatches``'; every random draw of a step
    (latent sample, dropped captions, noise, timesteps, samples without skips) comes from a generator seeded
    by (seed, step), so a resumed run trains bit-identically to an unstopped one.

    ``skip_dropout``: the fraction of each batch's samples whose skip connections are all zeroed, so that
    the up path must learn to read the mid block (``skip_connections_kept``)."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        latent_mean: torch.Tensor,
        latent_std: torch.Tensor,
        caption_index: torch.Tensor,
        text_embeds: torch.Tensor,
        scaling_factor: float,
        seed: int,
        lr: float,
        weight_decay: float,
        warmup_steps: int,
        caption_dropout: float,
        prediction_type: str = "epsilon",
        skip_dropout: float = 0.0,
    ):
        super().__init__()
        if not 0.0 <= skip_dropout < 1.0:
            raise ValueError(f"teacher.skip_dropout={skip_dropout!r}: accepted are fractions in [0, 1)")
        self.unet, self.scaling_factor, self.seed = unet, scaling_factor, seed
        # inputs, not state: kept out of checkpoints
        for name, value in (("latent_mean", latent_mean), ("latent_std", latent_std),
                            ("caption_index", caption_index), ("text_embeds", text_embeds)):  # fmt: skip
            self.register_buffer(name, value, persistent=False)
        schedule = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
        self.noise_scheduler = DDPMScheduler(
            **{key: SD_SCHEDULER_CONFIG[key] for key in schedule}, prediction_type=prediction_type
        )
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.caption_dropout, self.skip_dropout = caption_dropout, skip_dropout

    def training_step(self, batch, batch_idx):
        step, indices = batch
        draw = {"generator": torch.Generator(self.device).manual_seed(self.seed * 1_000_003 + int(step)),
                "device": self.device}  # fmt: skip
        mean, std = self.latent_mean[indices], self.latent_std[indices]
        latents = (mean + std * torch.randn(mean.shape, **draw)) * self.scaling_factor
        dropped = torch.rand(len(indices), **draw) < self.caption_dropout
        context = self.text_embeds[
            torch.where(dropped, len(self.text_embeds) - 1, self.caption_index[indices])
        ]
        noise = torch.randn(latents.shape, **draw)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(latents),), **draw)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        target = ddpm_task_target(self.noise_scheduler, latents, noise, timesteps)
        # drawn last, and only when asked, so that a run without it keeps the draws of the runs before it
        keep = torch.rand(len(indices), **draw) >= self.skip_dropout if self.skip_dropout else None
        with skip_connections_kept(self.unet, keep):
            loss = F.mse_loss(self.unet(noisy, timesteps, context).sample, target)
        self.log("teacher/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.unet.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = get_constant_schedule_with_warmup(optimizer, self.warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class ClassifierTraining(L.LightningModule):
    """Cross-entropy summed over the label slots (the classifier's heads), a slot a picture has not (-1)
    left out; batches hold real images and VAE round trips."""

    def __init__(self, classifier: AttributeClassifier, lr: float):
        super().__init__()
        self.classifier, self.lr = classifier, lr

    def training_step(self, batch, batch_idx):
        images, labels = batch[0], batch[1]
        logits = self.classifier(uint8_to_unit(images))
        loss = sum(
            F.cross_entropy(logits[name], labels[:, i], ignore_index=-1)
            for i, name in enumerate(self.classifier.heads)
        )
        self.log("classifier/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.classifier.parameters(), lr=self.lr)
        return {"optimizer": optimizer, "lr_scheduler": cosine_schedule(optimizer, self.trainer.max_steps)}


# how the VAE's learning rate runs: a constant one (the 64 px world's) left the 128 px world's VAE drifting to
# its last step, with a colour cast (orange read as yellow) that its step-1500 weights had not had
LR_SCHEDULES = ("constant", "cosine")


@contextmanager
def skip_connections_kept(unet: UNet2DConditionModel, keep: torch.Tensor | None) -> Iterator[None]:
    """Within the block, the U-Net's up stages see the skip connections of the samples where ``keep`` (B,)
    is true and zeros for the others; ``None`` keeps them all. diffusers has no switch for this, so forward
    pre-hooks scale the ``res_hidden_states_tuple`` each up stage is given."""
    if keep is None:
        yield
        return

    def masked(module, args, kwargs):
        skips = kwargs["res_hidden_states_tuple"]
        kwargs["res_hidden_states_tuple"] = tuple(
            skip * keep.view(-1, 1, 1, 1).to(skip.dtype) for skip in skips
        )
        return args, kwargs

    handles = [block.register_forward_pre_hook(masked, with_kwargs=True) for block in unet.up_blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> dict:
    """Lightning's scheduler entry: the rate falls from the optimizer's to 0 over ``total_steps``, by half a
    cosine, stepped every optimizer step."""
    decay = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps))
    )
    return {"scheduler": decay, "interval": "step"}


def random_crops(images: torch.Tensor, size: int) -> torch.Tensor:
    """A ``size`` x ``size`` window of each image (B, C, H, W), placed at random (the global generator)."""
    corners = torch.randint(0, images.shape[-1] - size + 1, (len(images), 2)).tolist()
    windows = [image[:, y : y + size, x : x + size] for image, (y, x) in zip(images, corners, strict=True)]
    return torch.stack(windows)


class StepBatches(IterableDataset):
    """``(step, pool indices (batch_size,))`` for every training step from ``start`` on, endlessly (the
    trainer's ``max_steps`` ends it): a pass over the pool (an epoch) at a time, each in an order drawn from
    (seed, epoch). A step's batch follows from the step alone, so a run resumed at any step draws what an
    unstopped one would, whatever Lightning's loops make of a resumed epoch."""

    def __init__(self, pool_size: int, batch_size: int, seed: int, start: int = 0):
        if pool_size < batch_size:
            raise ValueError(f"a pool of {pool_size} items cannot fill a batch of {batch_size}")
        self.pool_size, self.batch_size, self.seed, self.start = pool_size, batch_size, seed, start

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        per_epoch = self.pool_size // self.batch_size
        step = self.start
        while True:
            epoch, first = divmod(step, per_epoch)
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.pool_size, generator=generator)
            for position in range(first, per_epoch):
                yield step, order[position * self.batch_size : (position + 1) * self.batch_size]
                step += 1


class ShuffledEpochBatches(StepBatches):
    """``StepBatches`` in another order: that of a DataLoader that reshuffles the pool every epoch from one
    generator seeded with ``seed`` (and drops the last partial batch). This is the order the VAE stage has
    always drawn (the shipped 64 px VAE keeps its bits); a resumed run replays the epochs' shuffles, which
    costs index lists only, up to ``start``."""

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        order = DataLoader(
            TensorDataset(torch.arange(self.pool_size)), batch_size=self.batch_size, shuffle=True,
            drop_last=True, generator=torch.Generator().manual_seed(self.seed),
        )  # fmt: skip
        step = 0
        while True:
            # len(order) batches from a fresh iterator, which is left undrained: so Lightning runs an epoch
            # of a sized loader, and draining it would draw the shuffle a last time
            epoch = iter(order)
            for _ in range(len(order)):
                (indices,) = next(epoch)
                if step >= self.start:
                    yield step, indices
                step += 1


class StepCheckpoint(L.Callback):
    """Writes ``path`` every ``every_n_steps`` optimizer steps, replacing the last one atomically (a kill
    mid-write leaves the previous checkpoint whole, which Lightning's ModelCheckpoint does not promise).
    Resume with ``trainer.fit(..., ckpt_path=path)``."""

    def __init__(self, path: str | Path, every_n_steps: int):
        self.path, self.every_n_steps = Path(path), every_n_steps

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_name(f".{self.path.name}.partial")
        trainer.save_checkpoint(staging, weights_only=False)  # the optimizer too: a resume needs it
        staging.replace(self.path)


def random_state() -> dict:
    """The global generators' states (torch, CUDA where present, Python, NumPy), as ``torch.load`` reads
    with ``weights_only=True`` (Lightning's default for the checkpoints it resumes from): NumPy's key as a
    tensor."""
    kind, key, position, has_gauss, cached_gaussian = np.random.get_state()
    numpy = (kind, torch.from_numpy(key.astype(np.int64)), position, has_gauss, cached_gaussian)
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, key, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), position, has_gauss, cached_gaussian))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_step(path: Path) -> int:
    """The optimizer steps a Lightning checkpoint has trained (0 where there is none yet)."""
    if not path.is_file():
        return 0
    return int(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["global_step"])


# images per VAE call when encoding or round-tripping a pool: at 128 px on a 2-core CPU, batches of 8 took
# 20 ms an image to encode and 50 to round-trip, batches of 256 30 and 100 (their activations outgrow the cache)
VAE_BATCH = 8


@torch.no_grad()
def encode_pool(
    vae: AutoencoderKL, images: torch.Tensor, batch_size: int = VAE_BATCH
) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior's mean and std (N, 4, h, w) of uint8 images (N, 3, H, W)."""
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        posterior = vae.encode(uint8_to_unit(images[start : start + batch_size])).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def round_trip(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = VAE_BATCH) -> torch.Tensor:
    """uint8 images through the VAE (posterior mean) and back, as uint8."""
    out = []
    for start in range(0, len(images), batch_size):
        latents = vae.encode(uint8_to_unit(images[start : start + batch_size])).latent_dist.mean
        decoded = vae.decode(latents).sample.clamp(-1, 1)
        out.append(((decoded + 1) * 127.5).round().to(torch.uint8))
    return torch.cat(out)
