"""Training the mini-world teacher's VAE and U-Net, and the attribute classifier, with Lightning.

Each stage is a LightningModule over a pool of rendered images (uint8 in memory, so data costs nothing per
step): the VAE first (MSE + a small KL), then the U-Net on latents encoded once by the frozen VAE with text
embeddings computed once by the frozen text encoder (epsilon prediction, SD's DDPM schedule, captions
dropped for guidance), and the classifier on real images and VAE round trips (generated images are VAE
decodes, so it must read those as well as real ones).
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_constant_schedule_with_warmup
from torch.utils.data import DataLoader, TensorDataset

from bksdm.data.transforms import uint8_to_unit
from bksdm.miniworld.models import AttributeClassifier
from bksdm.miniworld.world import ATTRIBUTES, MiniWorld, all_captions
from bksdm.teachers.builtin import SD_SCHEDULER_CONFIG


class Pool:
    """``size`` rendered items of the world of ``seed`` from item ``offset``: images (N, 3, 64, 64) uint8,
    labels (N, 4) and caption indices (N,) into ``all_captions()``."""

    def __init__(self, size: int, seed: int, offset: int = 0):
        world = MiniWorld(size, seed=seed, offset=offset)
        items = [world[i] for i in range(size)]
        self.images = torch.stack([((s["pixel_values"] + 1) * 127.5).round().to(torch.uint8) for s in items])
        self.labels = torch.stack([s["labels"] for s in items])
        index = {text: i for i, (text, _) in enumerate(all_captions())}
        self.caption_index = torch.tensor([index[s["caption"]] for s in items])
        self.captions = [s["caption"] for s in items]

    def __len__(self) -> int:
        return len(self.images)

    def loader(self, batch_size: int, seed: int, *extra: torch.Tensor) -> DataLoader:
        """Shuffled batches of (images, labels, caption indices, *extra), reshuffled every epoch."""
        dataset = TensorDataset(self.images, self.labels, self.caption_index, *extra)
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=generator)


class VAETraining(L.LightningModule):
    def __init__(self, vae: AutoencoderKL, lr: float, kl_weight: float):
        super().__init__()
        self.vae, self.lr, self.kl_weight = vae, lr, kl_weight

    def training_step(self, batch, batch_idx):
        pixels = uint8_to_unit(batch[0])
        posterior = self.vae.encode(pixels).latent_dist
        reconstruction = self.vae.decode(posterior.sample()).sample
        mse = F.mse_loss(reconstruction, pixels)
        loss = mse + self.kl_weight * posterior.kl().mean()
        self.log("vae/mse", mse, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.vae.parameters(), lr=self.lr)


class TeacherTraining(L.LightningModule):
    """Epsilon-prediction training of the U-Net. ``latent_mean``/``latent_std`` (N, 4, 8, 8) are the
    frozen VAE's posterior of every pool image (sampled each step, as SD's training does);
    ``text_embeds`` (181, T, D) the text encoder's output for every caption and, last, the empty one."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_embeds: torch.Tensor,
        scaling_factor: float,
        lr: float,
        weight_decay: float,
        warmup_steps: int,
        caption_dropout: float,
    ):
        super().__init__()
        self.unet, self.scaling_factor = unet, scaling_factor
        self.register_buffer("text_embeds", text_embeds, persistent=False)
        schedule = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
        self.noise_scheduler = DDPMScheduler(**{key: SD_SCHEDULER_CONFIG[key] for key in schedule})
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.caption_dropout = caption_dropout

    def training_step(self, batch, batch_idx):
        _, _, caption_index, mean, std = batch
        latents = (mean + std * torch.randn_like(mean)) * self.scaling_factor
        dropped = torch.rand(len(caption_index), device=self.device) < self.caption_dropout
        context = self.text_embeds[torch.where(dropped, len(self.text_embeds) - 1, caption_index)]
        noise = torch.randn_like(latents)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (len(latents),), device=self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        loss = F.mse_loss(self.unet(noisy, timesteps, context).sample, noise)
        self.log("teacher/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.unet.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = get_constant_schedule_with_warmup(optimizer, self.warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class ClassifierTraining(L.LightningModule):
    """Cross-entropy summed over the four attribute heads; batches hold real images and VAE round trips."""

    def __init__(self, classifier: AttributeClassifier, lr: float):
        super().__init__()
        self.classifier, self.lr = classifier, lr

    def training_step(self, batch, batch_idx):
        images, labels = batch[0], batch[1]
        logits = self.classifier(uint8_to_unit(images))
        loss = sum(F.cross_entropy(logits[name], labels[:, i]) for i, name in enumerate(ATTRIBUTES))
        self.log("classifier/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.classifier.parameters(), lr=self.lr)
        total = self.trainer.max_steps
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": torch.optim.lr_scheduler.LambdaLR(
                    optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total))
                ),
                "interval": "step",
            },
        }


@torch.no_grad()
def encode_pool(
    vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior's mean and std (N, 4, h, w) of uint8 images (N, 3, H, W)."""
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        posterior = vae.encode(uint8_to_unit(images[start : start + batch_size])).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def round_trip(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """uint8 images through the VAE (posterior mean) and back, as uint8."""
    out = []
    for start in range(0, len(images), batch_size):
        latents = vae.encode(uint8_to_unit(images[start : start + batch_size])).latent_dist.mean
        decoded = vae.decode(latents).sample.clamp(-1, 1)
        out.append(((decoded + 1) * 127.5).round().to(torch.uint8))
    return torch.cat(out)
