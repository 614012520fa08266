"""python -m bksdm.evaluate model=<pipeline> prompts=<captions> real=<images>: FID / IS / CLIP score."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bksdm.cli import app, config_checks
from bksdm.eval.generation import generate_images, load_pipeline, plan_generation
from bksdm.eval.prompts import load_prompts
from bksdm.eval.scoring import real_image_files, real_statistics, score_images


def evaluate(cfg: DictConfig) -> dict:
    """Generate (resumably) one image per prompt, score it, write ``metrics.json`` and ``metrics.md``."""
    if cfg.eval.name == "miniworld":
        return evaluate_miniworld(cfg)
    out = Path(cfg.out)
    with config_checks():
        prompts = load_prompts(cfg.prompts, cfg.num_images)
        real_image_files(cfg.real)
        captions = [caption for _, caption in prompts]
        # images of another model or other settings are refused here, before any model is loaded
        plan = plan_generation(cfg, captions, out / "images")
    extractor, clip_model = instantiate(cfg.eval.features), instantiate(cfg.eval.clip)
    size = cfg.eval.score_size
    real = real_statistics(
        cfg.real, extractor, size, cfg.cache_dir, cfg.eval.batch_size
    )  # errors before generating
    print(f"sampling: {plan.origin}")
    pipeline = load_pipeline(cfg.model, plan.dtype, plan.device, cfg.scheduler)
    plan.folder.claim()
    paths = generate_images(
        pipeline, captions, plan.folder.path, seed=cfg.seed, batch_size=cfg.batch_size,
        resolution=cfg.resolution, **plan.sampling,
    )  # fmt: skip
    scores = score_images(
        paths, captions, extractor, clip_model, real, size, cfg.eval.is_splits, cfg.eval.batch_size
    )
    result = {
        **scores,
        "model": cfg.model,
        "sampling": plan.sampling,
        "num_images": len(paths),
        "real_images": real.count,
        "extractors": {"features": extractor.name, "clip": clip_model.name},
        "settings": OmegaConf.to_container(cfg, resolve=True),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    (out / "metrics.md").write_text(
        "| model | FID | IS | CLIP | images | extractors |\n|---|---|---|---|---|---|\n"
        f"| {cfg.model} | {scores['fid']:.2f} | {scores['is']:.2f} | {scores['clip']:.4f} | {len(paths)} | "
        f"{extractor.name}, {clip_model.name} |\n"
    )
    return result


ERRORS = ("error_to_teacher", "error_to_teacher/unconditional", "error_to_teacher/guided")


def evaluate_miniworld(cfg: DictConfig) -> dict:
    """``eval=miniworld``: accuracy, classifier-feature FID and error to the teacher of ``cfg.model``,
    written as ``metrics.json`` and ``metrics.md``."""
    from bksdm.miniworld.assets import ASSETS, load_classifier, teacher_path
    from bksdm.miniworld.evaluation import MiniWorldReference, evaluate_student

    settings, world = cfg.eval, cfg.eval.world or ASSETS
    teacher = load_pipeline(str(teacher_path(world)), "float32", cfg.device, cfg.scheduler)
    reference = MiniWorldReference.build(
        teacher, load_classifier(world), settings.num_real, settings.num_latents
    )
    student = load_pipeline(cfg.model, "float32", cfg.device, cfg.scheduler)
    student.set_progress_bar_config(disable=True)
    scores = evaluate_student(
        student, reference, settings.num_images, settings.num_inference_steps, settings.guidance_scale,
        settings.batch_size,
    )  # fmt: skip
    result = {
        **scores,
        "model": cfg.model,
        "world": str(world),
        "settings": OmegaConf.to_container(cfg, resolve=True),
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    names = ["shape", "colour", "position", "size", "all"]
    (out / "metrics.md").write_text(
        "| model | "
        + " | ".join(f"acc. {n}" for n in names)
        + " | FID (classifier) | error to teacher | unconditional | guided |\n"
        + "|---" * (len(names) + 5)
        + "|\n"
        + f"| {cfg.model} | "
        + " | ".join(f"{scores[f'accuracy/{n}']:.3f}" for n in names)
        + f" | {scores['fid']:.2f} | "
        + " | ".join(f"{scores[k]:.5f}" for k in ERRORS)
        + " |\n"
    )
    return result


@app("evaluate")
def main(cfg: DictConfig) -> None:
    result = evaluate(cfg)
    if cfg.eval.name == "miniworld":
        print(f"accuracy {result['accuracy/all']:.3f}  FID {result['fid']:.2f}  error to teacher "
              f"{result['error_to_teacher']:.5f} -> {cfg.out}")  # fmt: skip
        return
    print(
        f"FID {result['fid']:.2f}  IS {result['is']:.2f}  CLIP {result['clip']:.4f}  ({result['num_images']} images) -> {cfg.out}"
    )


if __name__ == "__main__":
    main()
