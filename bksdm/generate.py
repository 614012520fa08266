"""python -m bksdm.generate model=<pipeline> prompt="a tropical bird sitting on a branch": prompts to images."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from bksdm.cli import app, config_checks
from bksdm.cli.help import EntryHelp

HELP = EntryHelp(
    command="python -m bksdm.generate",
    summary="Images from any diffusers Stable Diffusion pipeline (a trained student, a hub id, builtin:*),\n"
    "reproducible (one seeded generator) and resumable (a manifest of what was drawn).",
    settings=("model", "prompt", "prompts_file", "out", "seed", "guidance_scale", "num_inference_steps", "scheduler"),
    examples=('python -m bksdm.generate model=outputs/runs/<run>/student prompt="a small blue square in the center"',
              "python -m bksdm.generate model=nota-ai/bk-sdm-small prompts_file=prompts.txt out=images/"),
    more="Manual: docs/evaluation.md",
)  # fmt: skip


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
    """Images of ``cfg``'s prompts in ``cfg.out``, kept from an earlier run only if its manifest shows the
    same model and settings; every setting and the folder are checked before the model is loaded."""
    # here, not at the top: composing alone (--cfg job) needs no torch
    from bksdm.eval.generation import generate_images, image_grid, load_pipeline, plan_generation

    out = Path(cfg.out)
    with config_checks():
        prompts = prompts_of(cfg)
        plan = plan_generation(cfg, prompts, out)
    print(f"sampling: {plan.origin}")
    pipeline = load_pipeline(cfg.model, plan.dtype, plan.device, cfg.scheduler)
    plan.folder.claim()
    paths = generate_images(
        pipeline,
        prompts,
        out,
        seed=cfg.seed,
        generator_device=plan.generator_device,
        batch_size=cfg.batch_size,
        resolution=cfg.resolution,
        **plan.sampling,
    )
    grid = out / "grid.png"
    if cfg.grid and len(paths) > 1:
        image_grid(paths).save(grid)
    else:  # a grid left by an earlier run would show other images than this run's
        grid.unlink(missing_ok=True)
    return paths


@app("generate", HELP)
def main(cfg: DictConfig) -> None:
    paths = generate(cfg)
    print(f"{len(paths)} images in {cfg.out}" + (" (and grid.png)" if cfg.grid and len(paths) > 1 else ""))


if __name__ == "__main__":
    main()
