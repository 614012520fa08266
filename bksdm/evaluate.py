"""python -m bksdm.evaluate model=<pipeline> prompts=<captions> real=<images>: FID / IS / CLIP score."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bksdm.eval.generation import generate_images, load_pipeline
from bksdm.eval.prompts import load_prompts
from bksdm.eval.scoring import real_statistics, score_images


def evaluate(cfg: DictConfig) -> dict:
    """Generate (resumably) one image per prompt, score it, write ``metrics.json`` and ``metrics.md``."""
    prompts = load_prompts(cfg.prompts, cfg.num_images)
    extractor, clip_model = instantiate(cfg.eval.features), instantiate(cfg.eval.clip)
    size = cfg.eval.score_size
    real = real_statistics(
        cfg.real, extractor, size, cfg.cache_dir, cfg.eval.batch_size
    )  # errors before generating
    pipeline = load_pipeline(cfg.model, cfg.dtype, cfg.device, cfg.scheduler)
    out = Path(cfg.out)
    captions = [caption for _, caption in prompts]
    paths = generate_images(
        pipeline, captions, out / "images", seed=cfg.seed, num_inference_steps=cfg.num_inference_steps,
        guidance_scale=cfg.guidance_scale, batch_size=cfg.batch_size, resolution=cfg.resolution,
    )  # fmt: skip
    scores = score_images(
        paths, captions, extractor, clip_model, real, size, cfg.eval.is_splits, cfg.eval.batch_size
    )
    result = {
        **scores,
        "model": cfg.model,
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


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    result = evaluate(cfg)
    print(
        f"FID {result['fid']:.2f}  IS {result['is']:.2f}  CLIP {result['clip']:.4f}  ({result['num_images']} images) -> {cfg.out}"
    )


if __name__ == "__main__":
    main()
