"""The evaluation protocols ``python -m bksdm.evaluate eval=<name>`` runs, one object each (``conf/eval/``):
how a model is scored, the table its scores make, the line that sums them up."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from hydra.utils import instantiate
from omegaconf import DictConfig

PER_IMAGE_FILE = "clip_scores.csv"  # beside metrics.json: index,image,caption,clip of every generated image


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
        cmmd: also CMMD on the CLIP scorer's image embeddings (``bksdm.eval.metric_states.CMMD``).
        fd_dinov2: config of a DINOv2 feature network (``bksdm.eval.dinov2.DINOv2Features``): also the
            Fréchet distance on its features; None: not.
    """

    def __init__(
        self, name: str, features: Mapping, clip: Mapping, score_size: int = 256, is_splits: int = 10,
        batch_size: int = 50, cmmd: bool = False, fd_dinov2: Mapping | None = None,
    ):  # fmt: skip
        self.name, self.features, self.clip = name, features, clip
        self.score_size, self.is_splits, self.batch_size, self.cmmd = score_size, is_splits, batch_size, cmmd
        self.fd_dinov2 = fd_dinov2

    def prepare(self, cfg: DictConfig) -> tuple[list[str], Any]:
        """The checks that need no model, before any process starts: the captions of the prompts and the
        images folder's plan (``bksdm.eval.generation.plan_generation``); a bad setting raises
        ``ConfigError``."""
        from bksdm.cli import config_checks
        from bksdm.eval.generation import plan_generation
        from bksdm.eval.prompts import load_prompts
        from bksdm.eval.scoring import real_image_files

        with config_checks():
            captions = [caption for _, caption in load_prompts(cfg.prompts, cfg.num_images)]
            real_image_files(cfg.real)
            # images of another model or other settings are refused here, before any model is loaded
            return captions, plan_generation(cfg, captions, Path(cfg.out) / "images")

    def run(self, cfg: DictConfig, prepared: tuple[list[str], Any]) -> dict[str, Any]:
        """Generates (resumably) ``cfg.num_images`` images of ``cfg.model`` under ``cfg.out/images`` and
        scores them. In a distributed world every rank extracts the features of its share of the real
        images, then generates and scores its share of the prompts (every ``N``-th: each image is still
        the one-process image of its index), and the scores are of every rank's images."""
        from bksdm.eval.generation import generate_images, image_path, load_pipeline
        from bksdm.eval.prompts import prompt_rule
        from bksdm.eval.ranks import barrier, is_rank_zero, strided_share
        from bksdm.eval.scoring import real_embeddings, real_statistics, score_images

        captions, plan = prepared
        extractor, clip_model = instantiate(self.features), instantiate(self.clip)
        # the real images' statistics first: a problem with them shows before hours of generation
        real_of = {"size": self.score_size, "cache_dir": cfg.cache_dir, "batch_size": self.batch_size,
                   "progress": True, "split_over_ranks": True}  # fmt: skip
        real = real_statistics(cfg.real, extractor, **real_of)
        dinov2 = real_dinov2 = embeddings = None
        if self.fd_dinov2 is not None:
            dinov2 = instantiate(self.fd_dinov2)
            real_dinov2 = real_statistics(cfg.real, dinov2, **real_of)
        if self.cmmd:
            embeddings = real_embeddings(cfg.real, clip_model, **real_of)
        if is_rank_zero():
            print(f"sampling: {plan.origin}")
        pipeline = load_pipeline(cfg.model, plan.dtype, plan.device, cfg.scheduler)
        if is_rank_zero():
            plan.folder.claim()
        barrier()  # no rank writes an image before the folder is this run's
        mine = strided_share(len(captions))
        generate_images(
            pipeline, captions, plan.folder.path, seed=cfg.seed, generator_device=plan.generator_device,
            batch_size=cfg.batch_size, resolution=cfg.resolution, progress=is_rank_zero(), indices=mine,
            **plan.sampling,
        )  # fmt: skip
        paths = [image_path(plan.folder.path, index) for index in range(len(captions))]
        scores = score_images(
            paths, captions, extractor, clip_model, real, self.score_size, self.is_splits, self.batch_size,
            progress=True, per_image=Path(cfg.out) / PER_IMAGE_FILE, real_clip_embeddings=embeddings,
            dinov2=dinov2, real_dinov2=real_dinov2, indices=mine,
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
        cmmd = f"CMMD {result['cmmd']:.3f}  " if "cmmd" in result else ""
        cmmd += f"FD-DINOv2 {result['fd_dinov2']:.2f}  " if "fd_dinov2" in result else ""
        return (
            f"FID {result['fid']:.2f}  IS {result['is']:.2f}  CLIP {result['clip']:.4f}  {cmmd}"
            f"({result['num_images']} images)"
        )


ERRORS = ("error_to_teacher", "error_to_teacher/unconditional", "error_to_teacher/guided")


class MiniWorldProtocol:
    """``eval=miniworld``: attribute accuracy, classifier-feature FID and error to the teacher, on the
    mini world (``bksdm.miniworld.evaluation``); prompts and real images come from the world itself.

    It takes the top-level settings ``num_images`` (cycling through the world's captions),
    ``num_inference_steps``, ``guidance_scale``, ``batch_size``, ``device`` and ``scheduler``; those it
    cannot take (``FIXED``) must keep the values its config gives them.

    Args:
        name: the protocol's name in results.
        world: a built mini world folder; None: the shipped one.
        num_real: held-out real items for the FID statistics.
        num_latents: held-out noisy latents for the error to the teacher.
    """

    # setting -> (the one value taken, why)
    FIXED: ClassVar[dict[str, tuple[Any, str]]] = {
        "prompts": (None, "the prompts are the world's own captions"),
        "real": (None, "the real images are held-out items of the world"),
        "seed": (None, "each round of the captions has its own seed (0, 1, ...)"),
        "resolution": (None, "the world's images have its own size (64 or 128 px)"),
        "dtype": ("float32", "the teacher and the student run in float32"),
        "generator_device": ("cpu", "the latents are drawn on the CPU"),
        "devices": (1, "it runs in one process (minutes on a CPU)"),
    }

    def __init__(self, name: str, world: str | None = None, num_real: int = 2000, num_latents: int = 256):
        self.name, self.world, self.num_real, self.num_latents = name, world, num_real, num_latents

    def prepare(self, cfg: DictConfig):
        """Before any model is loaded: refuses the settings it cannot take, and checks the images folder
        ``cfg.out/images`` against this run's settings (``bksdm.eval.generation.open_images_folder``);
        returns that folder, to claim once the models have loaded."""
        from bksdm.cli import config_checks
        from bksdm.cli.errors import ConfigError
        from bksdm.eval.generation import check_model, check_scheduler, images_manifest, open_images_folder
        from bksdm.miniworld.assets import world_folder, world_of
        from bksdm.miniworld.evaluation import image_captions

        for key, (value, reason) in self.FIXED.items():
            if cfg.get(key) != value:
                raise ConfigError(
                    f"eval=miniworld does not take {key}={cfg.get(key)!r}: {reason}; accepted is {key}={value!r} "
                    "(leave it unset)"
                )
        with config_checks():
            check_model(cfg.model)
            check_scheduler(cfg.scheduler)
            kind = world_of(world_folder(self.world))
            cycle = len(kind.evaluation_captions())
            if isinstance(cfg.num_images, bool) or not isinstance(cfg.num_images, int) or cfg.num_images < 2:
                raise ValueError(
                    f"num_images={cfg.num_images!r}: accepted are 2 or more images (FID needs 2; 1000 or more "
                    f"to mean much), cycling through the world's {cycle} evaluation captions"
                )
            manifest = images_manifest(
                cfg.model, [text for text, _ in image_captions(cfg.num_images, kind)], seed=None, scheduler=cfg.scheduler,
                num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
                resolution=None, dtype=cfg.dtype, generator_device="cpu",
            )  # fmt: skip
            manifest["noise"] = f"image i: seed (i // {cycle}) * 100003 + i % {cycle}, on the CPU"
            return open_images_folder(Path(cfg.out) / "images", manifest, overwrite=cfg.overwrite)

    def run(self, cfg: DictConfig, folder) -> dict[str, Any]:
        from bksdm.eval.generation import load_pipeline
        from bksdm.miniworld.assets import load_classifier, teacher_path, world_folder, world_of
        from bksdm.miniworld.evaluation import MiniWorldReference, evaluate_student

        world = world_folder(self.world)
        teacher = load_pipeline(str(teacher_path(world)), cfg.dtype, cfg.device, cfg.scheduler)
        reference = MiniWorldReference.build(
            teacher, load_classifier(world), self.num_real, self.num_latents, kind=world_of(world)
        )
        student = load_pipeline(cfg.model, cfg.dtype, cfg.device, cfg.scheduler)
        student.set_progress_bar_config(disable=True)
        folder.claim()
        scores = evaluate_student(
            student, reference, cfg.num_images, cfg.num_inference_steps, cfg.guidance_scale, cfg.batch_size,
            progress=True, folder=folder.path,
        )  # fmt: skip
        return {**scores, "model": cfg.model, "world": str(world), "num_images": cfg.num_images}

    def table(self, result: Mapping[str, Any]) -> str:
        return miniworld_table([result])

    def summary(self, result: Mapping[str, Any]) -> str:
        return (
            f"accuracy {result['accuracy/all']:.3f}  FID {result['fid']:.2f}  "
            f"error to teacher {result['error_to_teacher']:.5f}"
        )


def miniworld_table(results: list[Mapping[str, Any]]) -> str:
    """A markdown table of ``eval=miniworld`` results, one row each: every label slot's accuracy, and the
    all-slot accuracy on each held-out split (a dash where a result's world has no such column)."""
    keys = list(dict.fromkeys(key for result in results for key in result))
    accuracies = [key for key in keys if key.startswith("accuracy/")]
    accuracies += [key for key in keys if key.startswith("accuracy_") and key.endswith("/all")]
    names = [key.removeprefix("accuracy/").replace("accuracy_", "").replace("/", " ") for key in accuracies]
    header = (
        "| model | " + " | ".join(f"acc. {name}" for name in names)
        + " | FID (classifier) | error to teacher | unconditional | guided | images |\n"
    )  # fmt: skip
    rule = "|---" * (len(accuracies) + 6) + "|\n"
    rows = [
        f"| {result['model']} | "
        + " | ".join(f"{result[key]:.3f}" if key in result else "-" for key in accuracies)
        + f" | {result['fid']:.2f} | "
        + " | ".join(f"{result[k]:.5f}" for k in ERRORS)
        + f" | {result.get('num_images', '-')} |\n"
        for result in results
    ]
    return header + rule + "".join(rows)
