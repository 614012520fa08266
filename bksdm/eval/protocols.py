"""The evaluation protocols ``python -m bksdm.evaluate eval=<name>`` runs, one object each (``conf/eval/``):
how a model is scored, the table its scores make, the line that sums them up."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig


class PromptsProtocol:
    """FID / IS / CLIP score of one image per prompt against a folder of real images (``eval=coco30k``:
    the paper's zero-shot MS-COCO 30K with its extractors; ``eval=standin``: offline stand-in extractors).

    Args:
        name: the protocol's name in results.
        features: config of the Inception-style extractor (FID and IS), built when scoring starts.
        clip: config of the CLIP scorer.
        score_size: pixels images are resized to before scoring.
        is_splits: splits of the Inception score.
        batch_size: images per extractor call.
    """

    def __init__(
        self, name: str, features: Mapping, clip: Mapping, score_size: int = 256, is_splits: int = 10,
        batch_size: int = 50,
    ):  # fmt: skip
        self.name, self.features, self.clip = name, features, clip
        self.score_size, self.is_splits, self.batch_size = score_size, is_splits, batch_size

    def run(self, cfg: DictConfig) -> dict[str, Any]:
        """Generates (resumably) ``cfg.num_images`` images of ``cfg.model`` under ``cfg.out/images`` and
        scores them; a bad setting raises ``ConfigError`` before any model is loaded."""
        from bksdm.cli import config_checks
        from bksdm.eval.generation import generate_images, load_pipeline, plan_generation
        from bksdm.eval.prompts import load_prompts, prompt_rule
        from bksdm.eval.scoring import real_image_files, real_statistics, score_images

        with config_checks():
            prompts = load_prompts(cfg.prompts, cfg.num_images)
            real_image_files(cfg.real)
            captions = [caption for _, caption in prompts]
            # images of another model or other settings are refused here, before any model is loaded
            plan = plan_generation(cfg, captions, Path(cfg.out) / "images")
        extractor, clip_model = instantiate(self.features), instantiate(self.clip)
        # the real images' statistics first: a problem with them shows before hours of generation
        real = real_statistics(
            cfg.real, extractor, self.score_size, cfg.cache_dir, self.batch_size, progress=True
        )
        print(f"sampling: {plan.origin}")
        pipeline = load_pipeline(cfg.model, plan.dtype, plan.device, cfg.scheduler)
        plan.folder.claim()
        paths = generate_images(
            pipeline, captions, plan.folder.path, seed=cfg.seed, generator_device=plan.generator_device,
            batch_size=cfg.batch_size, resolution=cfg.resolution, **plan.sampling,
        )  # fmt: skip
        scores = score_images(
            paths, captions, extractor, clip_model, real, self.score_size, self.is_splits, self.batch_size,
            progress=True,
        )  # fmt: skip
        return {
            **scores,
            "model": cfg.model,
            "sampling": plan.sampling,
            "generator_device": plan.generator_device,
            "prompt_rule": prompt_rule(cfg.prompts),
            "num_images": len(paths),
            "real_images": real.count,
            "extractors": {"features": extractor.name, "clip": clip_model.name},
        }

    def table(self, result: Mapping[str, Any]) -> str:
        extractors = result["extractors"]
        return (
            "| model | FID | IS | CLIP | images | extractors |\n|---|---|---|---|---|---|\n"
            f"| {result['model']} | {result['fid']:.2f} | {result['is']:.2f} | {result['clip']:.4f} | "
            f"{result['num_images']} | {extractors['features']}, {extractors['clip']} |\n"
        )

    def summary(self, result: Mapping[str, Any]) -> str:
        return (
            f"FID {result['fid']:.2f}  IS {result['is']:.2f}  CLIP {result['clip']:.4f}  "
            f"({result['num_images']} images)"
        )


ERRORS = ("error_to_teacher", "error_to_teacher/unconditional", "error_to_teacher/guided")
ATTRIBUTES_AND_ALL = ("shape", "colour", "position", "size", "all")


class MiniWorldProtocol:
    """``eval=miniworld``: attribute accuracy, classifier-feature FID and error to the teacher, on the
    mini world (``bksdm.miniworld.evaluation``); prompts and real images come from the world itself.

    Args:
        name: the protocol's name in results.
        world: a built mini world folder; None: the shipped one.
        num_images: generated images, cycling through the world's captions.
        num_real: held-out real items for the FID statistics.
        num_latents: held-out noisy latents for the error to the teacher.
        num_inference_steps, guidance_scale, batch_size: how the images are sampled.
    """

    def __init__(
        self, name: str, world: str | None = None, num_images: int = 1080, num_real: int = 2000,
        num_latents: int = 256, num_inference_steps: int = 25, guidance_scale: float = 3.0,
        batch_size: int = 90,
    ):  # fmt: skip
        self.name, self.world = name, world
        self.num_images, self.num_real, self.num_latents = num_images, num_real, num_latents
        self.num_inference_steps, self.guidance_scale, self.batch_size = (
            num_inference_steps, guidance_scale, batch_size,
        )  # fmt: skip

    def run(self, cfg: DictConfig) -> dict[str, Any]:
        from bksdm.eval.generation import load_pipeline
        from bksdm.miniworld.assets import ASSETS, load_classifier, teacher_path
        from bksdm.miniworld.evaluation import MiniWorldReference, evaluate_student

        world = self.world or ASSETS
        teacher = load_pipeline(str(teacher_path(world)), "float32", cfg.device, cfg.scheduler)
        reference = MiniWorldReference.build(teacher, load_classifier(world), self.num_real, self.num_latents)
        student = load_pipeline(cfg.model, "float32", cfg.device, cfg.scheduler)
        student.set_progress_bar_config(disable=True)
        scores = evaluate_student(
            student, reference, self.num_images, self.num_inference_steps, self.guidance_scale,
            self.batch_size, progress=True,
        )  # fmt: skip
        return {**scores, "model": cfg.model, "world": str(world)}

    def table(self, result: Mapping[str, Any]) -> str:
        header = (
            "| model | " + " | ".join(f"acc. {n}" for n in ATTRIBUTES_AND_ALL)
            + " | FID (classifier) | error to teacher | unconditional | guided |\n"
        )  # fmt: skip
        rule = "|---" * (len(ATTRIBUTES_AND_ALL) + 5) + "|\n"
        row = (
            f"| {result['model']} | "
            + " | ".join(f"{result[f'accuracy/{n}']:.3f}" for n in ATTRIBUTES_AND_ALL)
            + f" | {result['fid']:.2f} | "
            + " | ".join(f"{result[k]:.5f}" for k in ERRORS)
            + " |\n"
        )
        return header + rule + row

    def summary(self, result: Mapping[str, Any]) -> str:
        return (
            f"accuracy {result['accuracy/all']:.3f}  FID {result['fid']:.2f}  "
            f"error to teacher {result['error_to_teacher']:.5f}"
        )
