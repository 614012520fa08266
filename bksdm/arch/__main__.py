"""python -m bksdm.arch teacher=sd14 arch=tiny: what a student keeps and removes, params and MACs per unit."""

from __future__ import annotations

import json

from omegaconf import DictConfig, OmegaConf

from bksdm.cli import ConfigError, app
from bksdm.cli.help import EntryHelp

FORMATS = ("table", "json")


HELP = EntryHelp(
    command="python -m bksdm.arch",
    summary="What a student keeps and removes of its teacher's U-Net, with parameters and MACs per unit\n"
    "(configs only: no weights are loaded).",
    settings=("resolution", "format"),
    examples=("python -m bksdm.arch teacher=sd14 arch=tiny", "python -m bksdm.arch teacher=sd21base format=json",
              "python -m bksdm.arch teacher=sdxl arch=ssd_1b"),
    more="Manual: docs/architecture.md",
)  # fmt: skip


@app("arch_report", HELP)
def main(cfg: DictConfig) -> None:
    # here, not at the top: --help and --cfg job need neither torch nor diffusers
    from bksdm.arch.report import render_report, report_dict
    from bksdm.teachers.loading import teacher_unet_config

    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r} is not accepted: use one of {list(FORMATS)}")
    if not isinstance(cfg.resolution, int) or cfg.resolution % 8:
        raise ConfigError(
            f"resolution={cfg.resolution!r} must be a pixel size divisible by 8 (SD's VAE factor)"
        )
    embedded = cfg.teacher.unet_config
    teacher = teacher_unet_config(
        cfg.teacher.source,
        OmegaConf.to_container(embedded, resolve=True) if embedded is not None else None,
        cfg.teacher.revision,
    )
    removal = OmegaConf.to_container(cfg.arch.removal, resolve=True)
    latent = cfg.resolution // 8
    if cfg.format == "json":
        print(
            json.dumps(
                {
                    "teacher": cfg.teacher.name,
                    "resolution": cfg.resolution,
                    **report_dict(teacher, removal, latent, cfg.arch.name),
                }
            )
        )
    else:
        title = f"{cfg.teacher.name} ({cfg.teacher.source}), {cfg.resolution} px"
        print(render_report(teacher, removal, latent, title, cfg.arch.name))


if __name__ == "__main__":
    main()
