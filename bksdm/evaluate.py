"""python -m bksdm.evaluate model=<pipeline> prompts=<captions> real=<images> [eval=coco30k|miniworld|standin]:
score a text-to-image model by the protocol ``eval=`` picks (``bksdm.eval.protocols``)."""

from __future__ import annotations

import json
import os
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
              "generator_device", "devices", "wandb.mode"),
    examples=("python -m bksdm.evaluate model=outputs/runs/<run>/student prompts=mscoco_val2014_30k/metadata.csv real=val2014/",
              "python -m bksdm.evaluate eval=miniworld model=outputs/runs/<run>/student"),
    more="Manual: docs/evaluation.md",
)  # fmt: skip


def evaluate(cfg: DictConfig) -> dict:
    """Runs ``cfg.eval``'s protocol on ``cfg.model`` and writes ``metrics.json`` (scores and settings) and
    ``metrics.md`` (the protocol's table) under ``cfg.out``, and, with ``wandb.mode`` set, logs them to a
    W&B run; returns the scores. With ``devices`` above 1 (or under ``torchrun``), one process per device
    shares the work (``start_ranks``); every rank returns the scores, rank 0 writes them."""
    # here, not at the top: --help and --cfg job need no torch
    from bksdm.eval.ranks import is_rank_zero, rank_and_size

    protocol = instantiate(cfg.eval, _recursive_=False)  # extractors are built when scoring starts
    prepared = protocol.prepare(cfg)  # a bad setting stops here, before any process starts
    start_ranks(cfg.devices, cfg.device)
    result = {
        "protocol": protocol.name,
        **protocol.run(cfg, prepared),
        "processes": rank_and_size()[1],
        "settings": OmegaConf.to_container(cfg, resolve=True),
    }
    if not is_rank_zero():
        return result
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    (out / "metrics.md").write_text(protocol.table(result))
    print(f"{protocol.summary(result)} -> {cfg.out}")
    from bksdm.eval.wandb_log import log_result

    log_result(OmegaConf.to_container(cfg.wandb, resolve=True), result, out)
    return result


def start_ranks(devices: int | str, device: str) -> None:
    """One process per device, ``devices`` of them (an int, or ``auto``: every GPU, or one CPU process),
    launched by Lightning Fabric as training launches DDP, on the accelerator ``device`` names (``auto``:
    CUDA when there is one). Under ``torchrun`` the processes are torchrun's (``devices`` unset, or its
    ``--nproc_per_node``). Returns in every process with its ``torch.distributed`` world (a CPU world
    talks over gloo) and its GPU made current, so that ``cuda`` is this rank's; one device outside
    ``torchrun``: nothing to start."""
    from bksdm.cli.errors import ConfigError

    if isinstance(devices, bool) or not (devices == "auto" or (isinstance(devices, int) and devices >= 1)):
        raise ConfigError(
            f"devices={devices!r}: accepted are a number of devices (1 or more; one process each) or auto"
        )
    num_nodes = 1
    if "TORCHELASTIC_RUN_ID" in os.environ:  # torchrun started this process and its peers
        per_node = int(os.environ["LOCAL_WORLD_SIZE"])
        if devices not in (1, "auto", per_node):
            raise ConfigError(
                f"devices={devices!r} under torchrun --nproc_per_node={per_node}: leave devices unset (torchrun's "
                "processes are the devices) or give devices={per_node}"
            )
        devices, num_nodes = per_node, int(os.environ["WORLD_SIZE"]) // per_node
    elif devices == 1:
        return
    import torch

    accelerator = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else device)
    if accelerator.type not in ("cpu", "cuda") or accelerator.index is not None:
        raise ConfigError(
            f"device={device!r} with devices={devices!r}: accepted are device=auto, cuda (one GPU per "
            "process) or cpu (CPU processes)"
        )
    from lightning.fabric import Fabric

    Fabric(accelerator=accelerator.type, devices=devices, num_nodes=num_nodes, strategy="ddp").launch()


@app("evaluate", HELP)
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
