"""Evaluation on a mini world (``eval=miniworld``): does a student draw its captions, how close are its
images to real ones, and how close are its noise predictions to the teacher's?

The world (``worlds.WorldKind``: the 64 px single-object one, or the relational ``scenes``) is the one its
folder was built for (``assets.world_of``).

- attribute accuracy: the classifier reads each label slot (shape, colour, position and size in the 64 px
  world) from each generated image (the world's evaluation captions in turn, ``num_images`` in all), per
  slot and all at once; ``accuracy/*`` over the captions training draws, ``accuracy_<split>_split/*`` over
  a held-out split's (the relational world's held-out colour-shape bindings);
- FID on the classifier's features against held-out real items of the world (real items that no
  training saw, in the evaluation captions' mix of splits; with 128 dimensions, 1000 or more generated
  images give a usable number);
- error to the teacher: mean squared difference of the student's and the teacher's noise predictions on
  fixed held-out noisy latents (held-out images, noise and timesteps drawn from a fixed seed), for the
  captions (``error_to_teacher``), for the empty caption (``error_to_teacher/unconditional``) and for
  their classifier-free-guided combination at the sampling guidance scale (``error_to_teacher/guided``):
  sampling uses the last, so a student that follows the teacher's conditional prediction closely can
  still draw poorly when its unconditional one has drifted (the paper trains without caption dropout).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from bksdm.eval.metrics import FeatureStats, frechet_distance
from bksdm.miniworld.models import AttributeClassifier
from bksdm.miniworld.scoring import attribute_accuracy, generate_pixels, noise_seed, to_signed
from bksdm.miniworld.worlds import EVALUATION_OFFSET, WORLDS, WorldKind


@dataclass
class MiniWorldReference:
    """What every evaluation of one teacher compares against, computed once: the real images' feature
    statistics and the teacher's predictions on the held-out noisy latents."""

    classifier: AttributeClassifier
    real_stats: FeatureStats
    noisy: torch.Tensor  # (N, 4, h, w) float32, CPU, as every tensor here
    timesteps: torch.Tensor  # (N,)
    context: torch.Tensor  # (N, T, D)
    teacher_prediction: torch.Tensor  # (N, 4, h, w)
    empty_context: torch.Tensor  # (1, T, D): the empty caption's embedding
    teacher_unconditional: torch.Tensor  # (N, 4, h, w): the teacher's prediction for the empty caption
    kind: WorldKind = WORLDS["single"]

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        teacher,
        classifier: AttributeClassifier,
        num_real: int = 2000,
        num_latents: int = 256,
        seed: int = 0,
        kind: WorldKind = WORLDS["single"],
    ):
        """``teacher``: a StableDiffusionPipeline of the mini-world teacher (fp32, CPU or GPU) of a world
        of ``kind``."""
        # real items in the evaluation captions' mix of splits, so that FID compares like with like
        splits = [split for _, split in kind.evaluation_captions()]
        images = torch.stack([
            kind.items(1, 0, EVALUATION_OFFSET + i, splits[i % len(splits)])[0]["pixel_values"]
            for i in range(num_real)
        ])  # fmt: skip
        real_stats = FeatureStats.of(batched(classifier.features, images))
        held_out = kind.items(num_latents, 0, EVALUATION_OFFSET + num_real)
        samples = [held_out[i] for i in range(num_latents)]
        unet, vae, device = teacher.unet, teacher.vae, teacher.unet.device
        generator = torch.Generator().manual_seed(seed)
        pixels = torch.stack([s["pixel_values"] for s in samples]).to(device, vae.dtype)
        latents = vae.encode(pixels).latent_dist.mean.float() * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator).to(device)
        scheduler = teacher.scheduler
        steps = torch.randint(0, scheduler.config.num_train_timesteps, (num_latents,), generator=generator)
        noisy = noise_latents(scheduler, latents, noise, steps.to(device))
        tokenizer = teacher.tokenizer
        ids = tokenizer(
            [s["caption"] for s in samples] + [""], padding="max_length",
            max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt",
        ).input_ids  # fmt: skip
        context, empty = teacher.text_encoder(ids.to(device))[0].float().split([num_latents, 1])

        prediction = _predict(unet, noisy, steps, context)
        unconditional = _predict(unet, noisy, steps, empty.expand_as(context))
        return cls(
            classifier, real_stats, noisy.cpu(), steps, context.cpu(), prediction, empty.cpu(), unconditional,
            kind,
        )  # fmt: skip


def noise_latents(
    scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """SD's forward process from the scheduler's betas (whatever sampler the pipeline holds)."""
    alphas = torch.cumprod(1.0 - scheduler.betas.to(latents.device, torch.float64), dim=0)[timesteps]
    shape = (-1, *([1] * (latents.ndim - 1)))
    return (alphas.sqrt().view(shape) * latents + (1 - alphas).sqrt().view(shape) * noise).to(latents.dtype)


def batched(function, inputs: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([function(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


def image_captions(num_images: int, kind: WorldKind = WORLDS["single"]) -> list[tuple[str, str]]:
    """The (caption, split) of each of ``num_images`` images: the world's evaluation captions in turn."""
    cycle = kind.evaluation_captions()
    return [cycle[index % len(cycle)] for index in range(num_images)]


def student_images(
    pipeline,
    num_images: int,
    num_inference_steps: int = 25,
    guidance_scale: float = 3.0,
    batch_size: int = 90,
    progress: bool = False,
    folder: Path | None = None,
    kind: WorldKind = WORLDS["single"],
) -> torch.Tensor:
    """Images (num_images, 3, H, W) in [-1, 1]: image ``i`` of caption ``i % n`` of the world's ``n``
    evaluation captions, from noise seeded by ``noise_seed(i, n)``. ``folder``: every image is also a PNG
    there (``000000.png``, ...), and the images already there are read instead of drawn, so an interrupted
    evaluation resumes (the folder checked against the run's settings first:
    ``bksdm.eval.generation.open_images_folder``)."""
    from bksdm.eval.generation import image_path, write_image

    texts = [text for text, _ in image_captions(num_images, kind)]
    todo = [i for i in range(num_images) if folder is None or not image_path(folder, i).is_file()]
    jobs = [(texts[i], noise_seed(i, len(kind.evaluation_captions()))) for i in todo]
    drawn = generate_pixels(
        pipeline,
        jobs,
        num_inference_steps,
        guidance_scale,
        batch_size,
        "mini-world images" if progress else None,
    )
    if folder is None:
        return to_signed(torch.cat([pixels for _, pixels in drawn]))
    for positions, pixels in drawn:
        for position, image in zip(positions, pixels, strict=True):
            write_image(image_path(folder, todo[position]), image.permute(1, 2, 0).numpy())
    arrays = []
    for index in range(num_images):
        with Image.open(image_path(folder, index)) as image:
            arrays.append(np.asarray(image.convert("RGB")))
    return to_signed(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))


@torch.no_grad()
def errors_to_teacher(
    unet: UNet2DConditionModel, reference: MiniWorldReference, guidance_scale: float
) -> dict[str, float]:
    """``error_to_teacher`` (the captions), ``error_to_teacher/unconditional`` (the empty caption) and
    ``error_to_teacher/guided`` (the unconditional prediction plus ``guidance_scale`` times the difference
    to the conditional one, as the sampler combines them), each against the teacher's counterpart."""
    noisy, timesteps, context = reference.noisy, reference.timesteps, reference.context
    conditional = _predict(unet, noisy, timesteps, context)
    unconditional = _predict(unet, noisy, timesteps, reference.empty_context.expand_as(context))
    teacher_conditional, teacher_unconditional = reference.teacher_prediction, reference.teacher_unconditional

    def guided(cond, uncond):
        return uncond + guidance_scale * (cond - uncond)

    mse = torch.nn.functional.mse_loss
    return {
        "error_to_teacher": float(mse(conditional, teacher_conditional)),
        "error_to_teacher/unconditional": float(mse(unconditional, teacher_unconditional)),
        "error_to_teacher/guided": float(
            mse(guided(conditional, unconditional), guided(teacher_conditional, teacher_unconditional))
        ),
    }


def _predict(
    unet: UNet2DConditionModel, noisy: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor
) -> torch.Tensor:
    """``unet``'s noise prediction (N, 4, h, w), fp32 on the CPU, for latents and contexts on any device."""
    parameter = next(unet.parameters())
    noisy, context = (t.to(parameter.device, parameter.dtype) for t in (noisy, context))
    return unet(noisy, timesteps.to(parameter.device), context).sample.float().cpu()


@torch.no_grad()
def evaluate_student(
    pipeline,
    reference: MiniWorldReference,
    num_images: int = 1080,
    num_inference_steps: int = 25,
    guidance_scale: float = 3.0,
    batch_size: int = 90,
    progress: bool = False,
    folder: Path | None = None,
) -> dict[str, float]:
    """The scores of ``pipeline`` (the teacher's VAE and text encoder around a student U-Net):
    ``accuracy/<slot>`` and ``accuracy/all`` (``accuracy_<split>_split/...`` for a held-out split's
    captions), ``fid`` (classifier features) and ``error_to_teacher`` (also ``/unconditional`` and
    ``/guided`` at ``guidance_scale``). ``num_images`` cycles through the world's evaluation captions (180
    in the 64 px world, 1000 in the relational one: a multiple weighs them as meant), seed by seed.
    ``folder``: the images are written there and those already there are kept (``student_images``)."""
    if num_images < 2:
        raise ValueError(
            f"num_images={num_images!r}: FID needs at least 2 images (1000 or more to mean much)"
        )
    kind = reference.kind
    captions = image_captions(num_images, kind)
    images = student_images(
        pipeline, num_images, num_inference_steps, guidance_scale, batch_size, progress, folder, kind
    )
    accuracy = {}
    for split in dict.fromkeys(split for _, split in captions):
        chosen = [i for i, (_, s) in enumerate(captions) if s == split]
        prefix = "accuracy" if split == "train" else f"accuracy_{split}_split"
        scores = attribute_accuracy(
            reference.classifier, images[chosen], [captions[i][0] for i in chosen], labels_of=kind.labels_of
        )
        accuracy |= {f"{prefix}/{name}": value for name, value in scores.items()}
    fid = frechet_distance(
        FeatureStats.of(batched(reference.classifier.features, images)), reference.real_stats
    )
    return {
        **accuracy,
        "fid": fid,
        **errors_to_teacher(pipeline.unet, reference, guidance_scale),
    }
