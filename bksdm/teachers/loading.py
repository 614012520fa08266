"""Loading the parts of a Stable Diffusion teacher, from a hub id or a local folder, with one code path.

``source`` is a Hugging Face hub id (``CompVis/stable-diffusion-v1-4``; offline, it must be in the
local HF cache), a local folder in diffusers layout (``model_index.json`` plus ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``; SDXL also ``text_encoder_2/``, ``tokenizer_2/``; FLUX, SD3
and PixArt ``transformer/`` in place of ``unet/`` and their own text towers, loaded as the classes their
``model_index.json`` names),
``builtin:miniworld`` for the shipped mini-world teacher, or ``builtin:toy`` for the offline toy pipeline (``builtin:sd14-random``: SD-v1.4's shapes at full width
with random weights, for benchmarks).
Whatever loads is checked: transformers and diffusers can hand back a degenerate tokenizer or a model
with randomly initialised tensors instead of failing, and training on those is worse than an error.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from bksdm.miniworld.assets import teacher_path, world_folder
from bksdm.teachers.builtin import random_pipeline_path

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "noise_scheduler")
SDXL_PARTS = ("text_encoder_2", "tokenizer_2")  # SDXL's second text tower (with its pooled projection)
# FLUX, SD3 and PixArt: a transformer denoiser, and SD3's third (T5) tower; their text towers are loaded as
# the classes their model_index.json names (CLIP, CLIP with projection, T5)
TRANSFORMER_PARTS = ("transformer", "text_encoder_3", "tokenizer_3")
ALL_PARTS = PARTS + SDXL_PARTS + TRANSFORMER_PARTS


def dtype_argument(dtype) -> dict:
    """The ``from_pretrained`` keyword for a dtype: ``dtype`` where diffusers takes it (it deprecated
    ``torch_dtype`` for it in 2026, huggingface/diffusers#14205, warning on every pipeline load), else
    ``torch_dtype``."""
    from diffusers.utils import deprecation_utils

    return {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": dtype}


BUILTINS = {
    "toy": random_pipeline_path,
    "sd14-random": functools.partial(random_pipeline_path, shape="sd14-random"),
    "sdxl-toy": functools.partial(random_pipeline_path, shape="sdxl-toy"),
    "sdxl-random": functools.partial(random_pipeline_path, shape="sdxl-random"),
    "flux-toy": functools.partial(random_pipeline_path, shape="flux-toy"),
    "sd3-toy": functools.partial(random_pipeline_path, shape="sd3-toy"),
    "pixart-toy": functools.partial(random_pipeline_path, shape="pixart-toy"),
    "flux-random": functools.partial(random_pipeline_path, shape="flux-random"),
    "sd35-random": functools.partial(random_pipeline_path, shape="sd35-random"),
    "pixart-random": functools.partial(random_pipeline_path, shape="pixart-random"),
    "miniworld": teacher_path,  # shipped with the package, trained by python -m bksdm.miniworld
    "miniworld-scenes": lambda: teacher_path(world_folder("builtin:miniworld-scenes")),  # world=scenes
}
_TOKENIZER_PROBE = "a photo of an astronaut riding a horse on mars"


class ComponentError(RuntimeError):
    """A part of a Stable Diffusion source could not be loaded, or loaded but is unusable."""


OFFLINE = ("1", "ON", "YES", "TRUE")  # what huggingface_hub reads as set


def check_available_offline(source: str, revision: str | None = None, key: str = "teacher.source") -> None:
    """With ``HF_HUB_OFFLINE`` set, a hub id must be in the local Hugging Face cache: said before
    anything is loaded, instead of a failed load of the first part."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() not in OFFLINE:
        return
    if source.startswith("builtin:") or Path(source).expanduser().is_dir():
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(source, "model_index.json", revision=revision), str):
        raise FileNotFoundError(
            f"{key}={source!r} is not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 forbids "
            f"downloading it: download it where there is a network (`huggingface-cli download {source}`, "
            "into $HF_HOME), give a local folder, or train an offline teacher (teacher=miniworld, "
            "teacher=toy)"
        )


def resolve_source(source: str) -> str:
    """A hub id or local folder for ``source``; ``builtin:<name>`` is built (once) and cached."""
    if not isinstance(source, str) or not source:
        raise ComponentError(
            f"teacher source must be a hub id, a local folder or builtin:toy, got {source!r}"
        )
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in BUILTINS:
            raise ComponentError(
                f"unknown builtin teacher {source!r}: accepted are {[f'builtin:{n}' for n in BUILTINS]}"
            )
        return str(BUILTINS[name]())
    return source


FAMILIES = (  # the pipeline classes bksdm distils the denoisers of
    "StableDiffusionPipeline", "StableDiffusionXLPipeline", "FluxPipeline", "StableDiffusion3Pipeline",
    "PixArtSigmaPipeline",
)  # fmt: skip
TRANSFORMER_FAMILIES = FAMILIES[2:]


def _model_index(path: str, revision: str | None = None) -> dict:
    from diffusers.configuration_utils import ConfigMixin

    class _Index(ConfigMixin):  # reads model_index.json without importing the pipeline classes
        config_name = "model_index.json"

    return dict(_Index.load_config(path, revision=revision))


def pipeline_family(path: str, revision: str | None = None) -> str:
    """The pipeline class name a resolved source's ``model_index.json`` names (one of ``FAMILIES``; a
    folder of another Stable Diffusion pipeline class, or one without the file, loads as
    StableDiffusionPipeline).

    Raises:
        ComponentError: a transformer pipeline bksdm does not distil, named."""
    try:
        index = _model_index(path, revision)
    except (
        OSError,
        ValueError,
    ):  # no model_index.json (a bare U-Net folder): the loaders say what is missing
        return "StableDiffusionPipeline"
    name = index.get("_class_name", "StableDiffusionPipeline")
    if name in FAMILIES:
        return name
    if "transformer" in index:
        raise ComponentError(
            f"{path!r} is a {name}, whose transformer bksdm does not distil: accepted are {list(FAMILIES)}"
        )
    return "StableDiffusionPipeline"


def pipeline_class(path: str, revision: str | None = None):
    """The diffusers pipeline class a resolved source (``resolve_source``) loads as: its family's
    (``pipeline_family``), e.g. StableDiffusionXLPipeline for SDXL teachers and their students."""
    import diffusers  # the pipeline classes pull in transformers' image processors: only when asked

    return getattr(diffusers, pipeline_family(path, revision))


@dataclass
class SDComponents:
    """The loaded parts of one Stable Diffusion source; parts that were not asked for are None."""

    source: str
    family: str = "StableDiffusionPipeline"  # its pipeline class (``FAMILIES``)
    unet: UNet2DConditionModel | None = None
    vae: AutoencoderKL | None = None
    text_encoder: CLIPTextModel | None = None
    tokenizer: CLIPTokenizer | None = None
    noise_scheduler: DDPMScheduler | None = None
    text_encoder_2: CLIPTextModelWithProjection | None = None  # SDXL; FLUX's T5; SD3's second CLIP
    tokenizer_2: CLIPTokenizer | None = None
    transformer: torch.nn.Module | None = None  # FLUX, SD3, PixArt
    text_encoder_3: torch.nn.Module | None = None  # SD3's T5
    tokenizer_3: object | None = None


def _subfolder(part: str) -> str:
    return "scheduler" if part == "noise_scheduler" else part


def _load_as_indexed(part: str, path: str, dtype: torch.dtype, revision: str | None):
    """A transformer family's part, as the class its ``model_index.json`` names; its training noise
    scheduler is the flow-matching one it names (FLUX, SD3) or DDPM over its betas (PixArt)."""
    import importlib

    library, class_name = _model_index(path, revision)[_subfolder(part)]
    cls = getattr(importlib.import_module(library), class_name)
    kwargs = {"subfolder": _subfolder(part), "revision": revision}
    if part == "noise_scheduler":
        return (cls if class_name.startswith("FlowMatch") else DDPMScheduler).from_pretrained(path, **kwargs)
    if part.startswith("tokenizer"):
        return cls.from_pretrained(path, **kwargs)
    dtype_kwarg = dtype_argument(dtype) if library == "diffusers" else {"dtype": dtype}
    return _checked(cls.from_pretrained(path, **dtype_kwarg, output_loading_info=True, **kwargs))


def _load(part: str, path: str, dtype: torch.dtype, revision: str | None, subfolder: str | None):
    kwargs = {"subfolder": subfolder, "revision": revision}
    if part == "unet":
        return _checked(
            UNet2DConditionModel.from_pretrained(
                path, **dtype_argument(dtype), output_loading_info=True, **kwargs
            )
        )
    if part == "vae":
        return _checked(
            AutoencoderKL.from_pretrained(path, **dtype_argument(dtype), output_loading_info=True, **kwargs)
        )
    if part == "text_encoder":
        return _checked(CLIPTextModel.from_pretrained(path, dtype=dtype, output_loading_info=True, **kwargs))
    if part == "text_encoder_2":
        return _checked(
            CLIPTextModelWithProjection.from_pretrained(path, dtype=dtype, output_loading_info=True, **kwargs)
        )
    if part in ("tokenizer", "tokenizer_2"):
        return CLIPTokenizer.from_pretrained(path, **kwargs)
    # training noise: the teacher's own beta schedule, as DDPM (its inference scheduler may be PNDM/DDIM)
    return DDPMScheduler.from_pretrained(path, **kwargs)


def _vae_subfolder(path: str) -> str | None:
    """``vae`` for a pipeline's VAE, None for a bare VAE (its config.json at the top)."""
    try:
        AutoencoderKL.load_config(path, subfolder="vae")
        return "vae"
    except (OSError, ValueError):
        return None


def vae_config(source: str, revision: str | None = None, vae_source: str | None = None) -> dict:
    """The config of the VAE ``load_components`` would load (no weights read)."""
    if vae_source is not None:
        path = resolve_source(vae_source)
        return dict(AutoencoderKL.load_config(path, subfolder=_vae_subfolder(path)))
    return dict(AutoencoderKL.load_config(resolve_source(source), subfolder="vae", revision=revision))


def vae_scale(config: Mapping) -> int:
    """Pixels per latent cell of the VAE with this config: it halves the side at every stage but its
    last, as diffusers' pipelines compute their ``vae_scale_factor`` (SD's 8; the scenes world's 4)."""
    return 2 ** (len(config["block_out_channels"]) - 1)


def _checked(loaded):
    model, info = loaded
    missing = sorted(k for k in info.get("missing_keys") or [] if not k.endswith("position_ids"))
    mismatched = sorted(info.get("mismatched_keys") or [])
    if missing or mismatched:
        raise ComponentError(
            f"{type(model).__name__} loaded with tensors left at random initialisation: "
            f"missing {missing[:10]}{' ...' if len(missing) > 10 else ''}, mismatched {mismatched[:10]}"
        )
    return model.eval()


def load_components(
    source: str,
    parts: Iterable[str] = PARTS,
    dtype: torch.dtype = torch.float32,
    revision: str | None = None,
    vae_source: str | None = None,
) -> SDComponents:
    """Load the asked-for parts of a Stable Diffusion source (see the module docstring).

    Args:
        source: hub id, local diffusers folder, or ``builtin:toy``.
        parts: any of ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``noise_scheduler``, and for an
            SDXL source ``text_encoder_2`` and ``tokenizer_2``.
        dtype: dtype of the loaded models (the tokenizer and scheduler have none).
        revision: hub revision (branch, tag or commit); None for the default branch.
        vae_source: where the VAE comes from instead (e.g. an fp16-fixed SDXL VAE): a bare VAE's hub id
            or folder (its config.json at the top), or a pipeline's (with ``vae/``); its default branch.

    Raises:
        ComponentError: a part is unknown, cannot be loaded, or loads degenerate.
    """
    parts = list(parts)
    unknown = [p for p in parts if p not in ALL_PARTS]
    if unknown:
        raise ComponentError(f"unknown component(s) {unknown}: accepted are {list(ALL_PARTS)}")
    path = resolve_source(source)
    family = pipeline_family(path, revision)
    transformer_family = family in TRANSFORMER_FAMILIES
    components = SDComponents(source=source, family=family)
    for part in parts:
        try:
            if part == "vae" and vae_source is not None:
                vae_path = resolve_source(vae_source)
                loaded = _load(part, vae_path, dtype, None, _vae_subfolder(vae_path))
            elif transformer_family and part != "vae":
                loaded = _load_as_indexed(part, path, dtype, revision)
            else:
                loaded = _load(part, path, dtype, revision, _subfolder(part))
        except ComponentError as error:
            raise ComponentError(f"{part} of {source!r}: {error}") from error
        except (OSError, ValueError) as error:
            origin = vae_source if part == "vae" and vae_source is not None else source
            raise ComponentError(
                f"could not load the {part} of {origin!r} (subfolder {_subfolder(part)!r}): {error}\n"
                "Accepted sources: a hub id (offline: only if it is in the local Hugging Face cache), "
                f"a local folder in diffusers layout, or one of {[f'builtin:{n}' for n in BUILTINS]}."
            ) from error
        setattr(components, part, loaded)
    towers = (
        ("tokenizer", "text_encoder"),
        ("tokenizer_2", "text_encoder_2"),
        ("tokenizer_3", "text_encoder_3"),
    )
    for tokenizer, encoder in towers:
        if getattr(components, tokenizer) is not None:
            check_tokenizer(getattr(components, tokenizer), source)
        if getattr(components, tokenizer) is not None and getattr(components, encoder) is not None:
            _check_text_pair(getattr(components, tokenizer), getattr(components, encoder), source)
    return components


def check_tokenizer(tokenizer, source: str = "?") -> None:
    """Raise ComponentError if a tokenizer came back degenerate (e.g. transformers' 3-token fallback)."""
    ids = tokenizer(_TOKENIZER_PROBE, truncation=True).input_ids  # (a toy T5 is shorter than the probe)
    specials = {tokenizer.bos_token_id, tokenizer.eos_token_id}
    content = [i for i in ids if i not in specials]
    unknown = tokenizer.unk_token_id is not None and tokenizer.unk_token_id in content
    if len(tokenizer) < 258 or not content or unknown:
        raise ComponentError(
            f"the tokenizer of {source!r} is degenerate ({len(tokenizer)} tokens; {_TOKENIZER_PROBE!r} -> {ids}): "
            "its vocabulary files were probably not found. A CLIP tokenizer needs vocab.json and merges.txt "
            "(or tokenizer.json) in the tokenizer folder."
        )
    if not 0 < tokenizer.model_max_length <= 4096:
        raise ComponentError(
            f"the tokenizer of {source!r} has model_max_length={tokenizer.model_max_length}: its "
            "tokenizer_config.json is missing or incomplete (Stable Diffusion's CLIP tokenizer uses 77)"
        )


def _check_text_pair(tokenizer, text_encoder, source: str) -> None:
    config = text_encoder.config
    positions = getattr(config, "max_position_embeddings", None)  # T5 has relative positions: any length
    if len(tokenizer) > config.vocab_size or (
        positions is not None and tokenizer.model_max_length > positions
    ):
        raise ComponentError(
            f"the tokenizer and text encoder of {source!r} do not fit: {len(tokenizer)} tokens and length "
            f"{tokenizer.model_max_length} against vocab_size {config.vocab_size} and "
            f"max_position_embeddings {positions}"
        )


def teacher_denoiser_config(
    source: str, embedded: Mapping | None = None, revision: str | None = None
) -> dict:
    """The config of the teacher's denoiser (its U-Net, or a FLUX, SD3 or PixArt transformer, whose
    ``_class_name`` says which): the embedded preset if given (no download), else read from ``source``."""
    if embedded is not None:
        return dict(embedded)
    try:
        path = resolve_source(source)
        transformer = pipeline_family(path, revision) in TRANSFORMER_FAMILIES
        subfolder = "transformer" if transformer else "unet"
        return dict(UNet2DConditionModel.load_config(path, subfolder=subfolder, revision=revision))
    except (OSError, ValueError) as error:
        raise ComponentError(f"could not read the denoiser config of {source!r}: {error}") from error
