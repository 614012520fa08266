"""Saving a student as a plain diffusers pipeline: loads anywhere diffusers does, no bksdm import needed."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from bksdm.eval.sampling import check_sampling, model_sampling, write_sampling
from bksdm.teachers.loading import dtype_argument, load_components, pipeline_class, resolve_source
from bksdm.teachers.single_file import save_single_file
from bksdm.training.atomic import atomic_directory

SINGLE_FILE = "student_unet.safetensors"  # the U-Net in the original layout, beside the diffusers parts


def save_student_pipeline(
    student: torch.nn.Module,
    teacher_source: str,
    folder: str | Path,
    revision: str | None = None,
    sampling: Mapping | None = None,
    single_file: bool = True,
    vae_source: str | None = None,
) -> Path:
    """Write ``folder`` as the teacher's pipeline (StableDiffusionPipeline, StableDiffusionXLPipeline for
    an SDXL teacher, FluxPipeline, StableDiffusion3Pipeline or PixArtSigmaPipeline for a transformer one): its
    VAE, text encoders, tokenizers and inference scheduler, as stored at ``teacher_source``, with the
    student U-Net in ``unet/`` (a transformer in ``transformer/``), and
    ``sampling.json``: the guidance scale and step count ``python -m bksdm.generate`` and ``evaluate``
    draw it with by default. A student is drawn as its teacher is: ``sampling`` (the teacher preset's
    ``sampling:`` block) over the teacher folder's own ``sampling.json``, else Stable Diffusion's.

    Weights are safetensors. The folder is staged and renamed, so a crash mid-save leaves the previous
    export (if any) intact. Load it with ``StableDiffusionPipeline.from_pretrained(folder)`` or just the
    U-Net with ``UNet2DConditionModel.from_pretrained(folder, subfolder="unet")``. ``single_file``: the
    U-Net also as ``SINGLE_FILE`` in the original checkpoint layout (``bksdm.teachers.single_file``), for
    the tools that load one file (``UNet2DConditionModel.from_single_file(file, config=folder,
    subfolder="unet")``, ComfyUI's U-Net loader); transformers are saved in diffusers layout only.
    ``vae_source``: the VAE the student was trained and sampled with when not the teacher's (e.g. SDXL's
    fp16-fixed one, ``teacher.vae_source``), saved in ``vae/`` in its place.
    """
    import diffusers  # the pipelines pull in transformers' image processors: only here

    defaults = {**model_sampling(teacher_source, revision)[0], **check_sampling(sampling or {}, "sampling")}
    source = resolve_source(teacher_source)
    loader = pipeline_class(source, revision)  # the teacher's own: StableDiffusionXLPipeline for SDXL
    sd_only = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    transformer = not isinstance(student, UNet2DConditionModel)
    parts = {"transformer" if transformer else "unet": student}
    if vae_source is not None:
        parts["vae"] = load_components(teacher_source, ["vae"], student.dtype, revision, vae_source).vae
    pipeline = loader.from_pretrained(
        source,
        **parts,
        revision=revision,
        **(sd_only if loader is diffusers.StableDiffusionPipeline else {}),
        **dtype_argument(student.dtype),  # one precision throughout (a teacher may store its parts in fp16)
    )
    with atomic_directory(folder) as staging:
        pipeline.save_pretrained(staging, safe_serialization=True)
        for tokenizer in ("tokenizer", "tokenizer_2", "tokenizer_3"):
            if (staging / tokenizer).is_dir():
                _copy_missing_files(_source_subfolder(source, tokenizer, revision), staging / tokenizer)
        write_sampling(staging, defaults)
        if single_file and not transformer:
            save_single_file(student, staging / SINGLE_FILE)
    return Path(folder)


def _source_subfolder(source: str, subfolder: str, revision: str | None) -> Path | None:
    local = Path(source) / subfolder
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    try:  # the files are in the local cache already: from_pretrained just read them
        return (
            Path(snapshot_download(source, allow_patterns=[f"{subfolder}/*"], revision=revision)) / subfolder
        )
    except (OSError, ValueError):
        return None


def _copy_missing_files(source: Path | None, target: Path) -> None:
    """Keep the teacher's own tokenizer files (e.g. vocab.json and merges.txt, which transformers 5 no
    longer writes but transformers 4's CLIPTokenizer needs) beside what save_pretrained wrote."""
    if source is None or not source.is_dir():
        return
    for file in source.iterdir():
        if file.is_file() and not (target / file.name).exists():
            shutil.copy2(file, target / file.name)
