"""python -m bksdm.evaluate model=<pipeline> prompts=<captions> real=<images> [eval=coco30k|miniworld|standin]:
score a text-to-image model by the protocol ``eval=`` picks (``bksdm.eval.protocols``)."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bksdm.cli import app
from bksdm.cli.help import EntryHelp

HELP = EntryHelp(
    command="python -m bksdm.evaluate",
    summary="Score a text-to-image model by a protocol: eval=coco30k is the paper's zero-shot MS-COCO 30K\n"
    "(FID, IS, CLIP score; the eval extra), eval=miniworld the mini world's accuracy, FID and error to its teacher.",
    settings=("model", "prompts", "real", "num_images", "out", "guidance_scale", "num_inference_steps", "batch_size",
              "generator_device", "wandb.mode"),
    examples=("python -m bksdm.evaluate model=outputs/runs/<run>/student prompts=mscoco_val2014_30k/metadata.csv real=val2014/",
              "python -m bksdm.evaluate eval=miniworld model=outputs/runs/<run>/student"),
    more="Manual: docs/evaluation.md",
)  # fmt: skip


def evaluate(cfg: DictConfig) -> dict:
    """Runs ``cfg.eval``'s protocol on ``cfg.model`` and writes ``metrics.json`` (scores and settings) and
    ``metrics.md`` (the protocol's table) under ``cfg.out``, and, with ``wandb.mode`` set, logs them to a
    W&B run; returns the scores."""
    protocol = instantiate(cfg.eval, _recursive_=False)  # extractors are built when scoring starts
    result = {
        "protocol": protocol.name,
        **protocol.run(cfg),
        "settings": OmegaConf.to_container(cfg, resolve=True),
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    (out / "metrics.md").write_text(protocol.table(result))
    print(f"{protocol.summary(result)} -> {cfg.out}")
    from bksdm.eval.wandb_log import log_result

    log_result(OmegaConf.to_container(cfg.wandb, resolve=True), result, out)
    return result


@app("evaluate", HELP)
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
