"""python -m bksdm.generate model=<pipeline> prompt="a tropical bird sitting on a branch": prompts to images."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from bksdm.eval.generation import generate_images, image_grid, load_pipeline


def prompts_of(cfg: DictConfig) -> list[str]:
    """The prompt and the lines of the prompts file, in that order (empty lines ignored)."""
    prompts = [cfg.prompt] if cfg.prompt else []
    if cfg.prompts_file:
        path = Path(cfg.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(
                f"prompts_file={str(path)!r} does not exist: give a text file, one prompt per line"
            )
        prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError('no prompt: set prompt="..." or prompts_file=<a text file, one prompt per line>')
    return prompts


def generate(cfg: DictConfig) -> list[Path]:
    prompts = prompts_of(cfg)
    pipeline = load_pipeline(cfg.model, cfg.dtype, cfg.device, cfg.scheduler)
    paths = generate_images(
        pipeline,
        prompts,
        cfg.out,
        seed=cfg.seed,
        num_inference_steps=cfg.num_inference_steps,
        guidance_scale=cfg.guidance_scale,
        batch_size=cfg.batch_size,
        resolution=cfg.resolution,
    )
    if cfg.grid and len(paths) > 1:
        image_grid(paths).save(Path(cfg.out) / "grid.png")
    return paths


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    paths = generate(cfg)
    print(f"{len(paths)} images in {cfg.out}" + (" (and grid.png)" if cfg.grid and len(paths) > 1 else ""))


if __name__ == "__main__":
    main()
