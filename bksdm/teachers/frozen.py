"""The teacher's frozen parts as one object: stored and computed in a low precision, without autograd,
moved to the training device once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from bksdm.teachers.conditioning import Conditioning, encode_text, takes_added_conditioning
from bksdm.teachers.loading import TRANSFORMER_FAMILIES, SDComponents, vae_config, vae_scale

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FROZEN_DTYPES = ("auto", *DTYPES)
# how the frozen denoiser's weights may be stored below the dtype it computes in (None: in that dtype)
STORAGE_DTYPES = {None: None, "float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}


def resolve_storage_dtype(name: str | None) -> torch.dtype | None:
    """``distill.frozen_storage_dtype``: null, or an FP8 format the frozen denoiser's weights are kept in."""
    if name not in STORAGE_DTYPES:
        raise ValueError(f"distill.frozen_storage_dtype={name!r}: accepted are {[*STORAGE_DTYPES]}")
    return STORAGE_DTYPES[name]


def resolve_frozen_dtype(name: str, device: torch.device | str, transformer: bool = False) -> str:
    """``auto``: float16 on CUDA (the paper's choice, tensor cores), bfloat16 elsewhere (CPUs compute
    bf16 natively, AMX or AVX-512, while fp16 convolutions and group norms on a CPU are slow or missing);
    bfloat16 everywhere for a ``transformer`` teacher (FLUX, SD3.5 and PixArt-Sigma are bf16 models, and
    FLUX's activations overflow fp16)."""
    if name not in FROZEN_DTYPES:
        raise ValueError(f"distill.frozen_dtype={name!r}: accepted are {list(FROZEN_DTYPES)}")
    if name != "auto":
        return name
    return "float16" if torch.device(device).type == "cuda" and not transformer else "bfloat16"


@dataclass
class FrozenTeacher:
    """The teacher's denoiser (U-Net or transformer), VAE, text encoder(s), tokenizer(s) and noise schedule,
    frozen.

    Held outside nn.Module registration on purpose: they are not parameters of the LightningModule, so
    they stay out of the optimizer, out of checkpoints (they are reloaded from ``source``) and out of
    DDP/FSDP wrapping and gradient synchronisation.
    """

    unet: UNet2DConditionModel | None  # None for a transformer teacher
    vae: AutoencoderKL | None  # None when the data brings pre-encoded latents
    text_encoder: CLIPTextModel | None  # None when the data brings text embeddings
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    dtype: torch.dtype
    latent_scale: float  # the VAE's scaling_factor: latents are multiplied by it
    source: str
    revision: str | None = None
    inference_mode: bool = True  # False: called plainly, as the reference implementation does
    device: torch.device | None = None  # where the models are now; None: not placed yet
    text_encoder_2: CLIPTextModelWithProjection | None = None  # SDXL's second tower (None: pre-encoded)
    tokenizer_2: CLIPTokenizer | None = None  # SDXL only
    vae_dtype: torch.dtype | None = None  # the VAE's: ``dtype``, or float32 for SDXL's where that is fp16
    vae_source: str | None = None  # where the VAE comes from when not ``source`` (an fp16-fixed SDXL VAE)
    family: str = "StableDiffusionPipeline"  # the teacher's pipeline class (``loading.FAMILIES``)
    transformer: torch.nn.Module | None = None  # FLUX, SD3, PixArt: the denoiser
    text_encoder_3: torch.nn.Module | None = None  # SD3's T5 (None: pre-encoded)
    tokenizer_3: object | None = None
    latent_shift: float = 0.0  # the VAE's shift_factor (FLUX, SD3): latents are (z - shift) * scale
    storage_dtype: torch.dtype | None = None  # the denoiser's weights at rest (FP8), when not ``dtype``
    vae_scale: int = 8  # pixels per latent cell of its VAE (``loading.vae_scale``): SD's 8, LDM-4's 4

    @classmethod
    def freeze(
        cls,
        parts: SDComponents,
        dtype: torch.dtype,
        source: str,
        revision: str | None = None,
        inference_mode: bool = True,
        vae_source: str | None = None,
        storage_dtype: torch.dtype | None = None,
    ) -> FrozenTeacher:
        """Frozen parts from loaded ones: no gradients, eval mode, cast to ``dtype`` (in place: copy a
        student from the U-Net first). An SDXL teacher's VAE stays in float32 where ``dtype`` is float16
        and its config says ``force_upcast`` (SDXL's VAE overflows in fp16; the fp16-fixed one says
        false), as StableDiffusionXLPipeline decides. ``storage_dtype`` (FP8): the denoiser's weights are
        kept in it and each layer's are upcast to ``dtype`` for its forward (diffusers' layerwise casting,
        which keeps norms, embeddings and patch projections in ``dtype``); the computation stays in
        ``dtype``, the teacher's weights take less memory (FLUX.1-dev: 14.1 GiB against 22.2 in bf16)."""
        latent_config = (
            parts.vae.config if parts.vae is not None else vae_config(source, revision, vae_source)
        )
        denoiser = parts.transformer if parts.transformer is not None else parts.unet
        vae_dtype = dtype
        if (
            takes_added_conditioning(denoiser.config)
            and dtype == torch.float16
            and parts.vae is not None
            and parts.vae.config.get("force_upcast", True)
        ):
            vae_dtype = torch.float32
        models = (denoiser, parts.vae, parts.text_encoder, parts.text_encoder_2, parts.text_encoder_3)
        for model in filter(None, models):
            # nn.Module.to, not diffusers' override: that one warns about fp32-only modules SD has none of
            torch.nn.Module.to(
                model.requires_grad_(False).eval(), dtype=vae_dtype if model is parts.vae else dtype
            )
        if storage_dtype is not None:
            denoiser.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=dtype)
        return cls(
            parts.unet, parts.vae, parts.text_encoder, parts.tokenizer, parts.noise_scheduler, dtype,
            latent_config["scaling_factor"], source, revision, inference_mode, text_encoder_2=parts.text_encoder_2,
            tokenizer_2=parts.tokenizer_2, vae_dtype=vae_dtype, vae_source=vae_source, family=parts.family,
            transformer=parts.transformer, text_encoder_3=parts.text_encoder_3, tokenizer_3=parts.tokenizer_3,
            latent_shift=latent_config.get("shift_factor") or 0.0, storage_dtype=storage_dtype,
            vae_scale=vae_scale(latent_config),
        )  # fmt: skip

    @property
    def denoiser(self) -> torch.nn.Module:
        """The model the students imitate: the U-Net, or the transformer of a FLUX, SD3 or PixArt teacher."""
        return self.transformer if self.transformer is not None else self.unet

    @property
    def sdxl(self) -> bool:
        """Whether the U-Net takes SDXL's added conditioning (two text towers, pooled text, size ids)."""
        return self.unet is not None and takes_added_conditioning(self.unet.config)

    @property
    def is_transformer(self) -> bool:
        return self.family in TRANSFORMER_FAMILIES

    def encode_text(self, captions: list[str]) -> Conditioning:
        """The text conditioning of ``captions`` in ``dtype`` on the frozen parts' device: the context
        (B, T, D) and, by family, the pooled text (SDXL, FLUX, SD3; B, P) or the attention mask (PixArt);
        call inside ``compute()``."""
        return encode_text(self, self.family, captions, self.sdxl)

    def models(self) -> list[torch.nn.Module]:
        models = (self.denoiser, self.vae, self.text_encoder, self.text_encoder_2, self.text_encoder_3)
        return [m for m in models if m is not None]

    def to(self, device: torch.device) -> FrozenTeacher:
        """Moves the models to ``device`` (once: a no-op when they are there)."""
        device = torch.device(device)
        if self.device != device:
            for model in self.models():
                model.to(device)
            self.device = device
        return self

    @contextlib.contextmanager
    def compute(self) -> Iterator[None]:
        """Where the frozen parts run: in ``dtype``, without autograd. Autocast is switched off, since
        under ``bf16-mixed`` it would run fp16 weights in bf16 (and on a CPU mix the two in one group
        norm, which fails)."""
        with contextlib.ExitStack() as stack:
            if self.inference_mode:
                stack.enter_context(torch.inference_mode())
            stack.enter_context(torch.autocast(self.device.type if self.device else "cpu", enabled=False))
            yield

    def sampling_precision(self, device: torch.device) -> contextlib.AbstractContextManager:
        """For sampling with a float32 student between a low-precision VAE and text encoder: autocast to
        ``dtype``, or nothing when the frozen parts are float32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=self.dtype)
